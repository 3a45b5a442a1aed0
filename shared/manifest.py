"""Artifact manifests: the sha256 of every file, signed with the operator's Ed25519 key.

Layout of an artifact directory::

    manifest.json   name, version, dimensions, quantization, creation time, {file: {sha256, size}}
    manifest.sig    base64 Ed25519 signature over the exact bytes of manifest.json
    ...             the files the manifest lists
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared import signing
from shared.errors import UserError, VerificationError

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
MANIFEST_SCHEMA = 1
# The most bytes a manifest.json may have. tiny.en's is 2.6 kB (a name, some metadata, a sha256 and a size per
# file): 1 MiB leaves room for artifacts of thousands of files, and is what a device downloads at most before the
# manifest's sha256 can be checked (issue 13, finding 5). FetchModel refuses to serve a bigger one.
MAX_MANIFEST_BYTES = 1 << 20
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    files: dict[str, dict[str, Any]]
    raw: dict[str, Any]
    sha256: str  # of manifest.json's bytes: what the fleet's desired-model messages name

    @property
    def total_bytes(self) -> int:
        return sum(int(f["size"]) for f in self.files.values())


def write_manifest(directory: Path, meta: dict[str, Any], key: Ed25519PrivateKey) -> Manifest:
    """Hash every file in `directory` (except the manifest pair), write manifest.json and sign it."""
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel in (MANIFEST_NAME, SIGNATURE_NAME):
            continue
        files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    doc = {"schema": MANIFEST_SCHEMA, **meta, "files": files}
    data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    if len(data) > MAX_MANIFEST_BYTES:  # devices and FetchModel would refuse it: fail the build instead
        raise UserError(f"{directory / MANIFEST_NAME}: {len(data)} bytes, more than the {MAX_MANIFEST_BYTES} "
                        f"a manifest may have (too many files)")
    (directory / MANIFEST_NAME).write_bytes(data)
    (directory / SIGNATURE_NAME).write_text(base64.b64encode(signing.sign(key, data)).decode() + "\n")
    return _parse(data)


_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _check_entry(rel: object, info: object) -> None:
    """One `files` entry: a relative path that stays inside the artifact, a byte size and a sha256. Even a
    signed manifest is checked: an edge writes each file under its listed name, so `../x` or `/etc/x` would
    write outside its model directory. TypeError/ValueError naming the entry otherwise."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel:
        raise ValueError(f"file name {rel!r} is not a relative path")
    parts = PurePosixPath(rel).parts
    if rel.startswith("/") or any(p in ("..", ".") for p in parts) or rel in (MANIFEST_NAME, SIGNATURE_NAME):
        raise ValueError(f"file name {rel[:80]!r} leaves the artifact directory or names the manifest")
    if not isinstance(info, dict):
        raise TypeError(f"entry of {rel[:80]!r} is not an object")
    size, digest = info.get("size"), info.get("sha256")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"size of {rel[:80]!r} is not a byte count")
    if not isinstance(digest, str) or not _SHA256_RE.match(digest):
        raise ValueError(f"sha256 of {rel[:80]!r} is not 64 hex digits")


def _parse(data: bytes) -> Manifest:
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise TypeError("not a JSON object")
        files = doc["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not an object")
        for rel, info in files.items():
            _check_entry(rel, info)
        return Manifest(
            name=str(doc["name"]),
            version=str(doc["version"]),
            files=files,
            raw=doc,
            sha256=hashlib.sha256(data).hexdigest(),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise VerificationError(f"{MANIFEST_NAME}: malformed ({exc})") from None


def read_manifest(directory: Path) -> Manifest:
    """Parse manifest.json without checking anything else."""
    path = directory / MANIFEST_NAME
    try:
        return _parse(path.read_bytes())
    except FileNotFoundError:
        raise VerificationError(f"{path}: missing") from None


def verify_signature(directory: Path, pubkey: Ed25519PublicKey) -> Manifest:
    path, sig_path = directory / MANIFEST_NAME, directory / SIGNATURE_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise VerificationError(f"{path}: missing") from None
    try:
        sig = base64.b64decode(sig_path.read_text().strip(), validate=True)
    except FileNotFoundError:
        raise VerificationError(f"{sig_path}: missing (unsigned artifact)") from None
    except (binascii.Error, ValueError):
        raise VerificationError(f"{sig_path}: not a base64 signature") from None
    signing.verify(pubkey, data, sig, str(path))
    return _parse(data)


def verify_artifact(directory: Path, pubkey: Ed25519PublicKey) -> Manifest:
    """Check the manifest's signature, then every file's size and sha256. Raise naming the first bad file."""
    if not directory.is_dir():
        raise VerificationError(f"{directory}: not a directory")
    manifest = verify_signature(directory, pubkey)
    for rel, info in sorted(manifest.files.items()):
        path = directory / rel
        if not path.is_file():
            raise VerificationError(f"{path}: missing")
        if path.stat().st_size != int(info["size"]):
            raise VerificationError(f"{path}: size {path.stat().st_size} != {info['size']} in manifest")
        if sha256_file(path) != info["sha256"]:
            raise VerificationError(f"{path}: sha256 mismatch (file changed since signing)")
    return manifest
