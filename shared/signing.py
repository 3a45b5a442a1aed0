"""Ed25519 operator keys: make, load, sign and verify. Keys live in files; nothing here prints them."""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.errors import UserError, VerificationError
from shared.fsutil import SECRET_MODE, atomic_write, warn_if_exposed

PRIVATE_NAME = "operator.key"
PUBLIC_NAME = "operator.pub"


def init_keypair(directory: Path, force: bool = False) -> tuple[Path, Path]:
    """Create an Ed25519 key pair as PEM files; the private one is readable by its owner only."""
    directory.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = directory / PRIVATE_NAME, directory / PUBLIC_NAME
    if priv_path.exists() and not force:
        raise UserError(f"{priv_path} already exists; pass --force to replace it")
    key = Ed25519PrivateKey.generate()
    priv_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # A new file (write-then-rename) with mode 0600: with --force, an existing key that was 0644 ends 0600 too.
    atomic_write(priv_path, priv_pem, mode=SECRET_MODE)
    atomic_write(pub_path, pub_pem)
    return priv_path, pub_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    warn_if_exposed(path, "operator private key")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise UserError(f"private key not found: {path} (make one with `fleetctl keys init`)") from None
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise UserError(f"public key not found: {path}") from None
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UserError(f"{path} is not an Ed25519 public key")
    return key


def public_key_from_bytes(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise UserError("not an Ed25519 public key")
    return key


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return key.sign(data)


def verify(key: Ed25519PublicKey, data: bytes, signature: bytes, what: str) -> None:
    """Raise VerificationError naming `what` when the signature does not match."""
    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise VerificationError(f"{what}: bad signature (wrong key or tampered content)") from None
