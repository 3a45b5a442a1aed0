"""`fleetctl certs init`: a local CA plus server and device certificates for development TLS and mTLS.

Production fleets use their own PKI; these are for the demo, the tests and a first deployment.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.errors import UserError
from shared.fsutil import SECRET_MODE, atomic_write


@dataclass(frozen=True)
class CertPlan:
    directory: Path
    server_names: tuple[str, ...] = ("localhost", "cloud", "mosquitto")
    devices: tuple[str, ...] = ()
    days: int = 365


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    # Mode 0600 even when --force replaces a key file that had a looser mode.
    atomic_write(path, pem, mode=SECRET_MODE)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "whisper-fleet"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    subject: str, key: ec.EllipticCurvePrivateKey, ca_key: ec.EllipticCurvePrivateKey, ca_name: x509.Name,
    days: int, *, ca: bool = False, sans: list[x509.GeneralName] | None = None, client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if not ca:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def init_certs(plan: CertPlan, force: bool = False) -> list[Path]:
    d = plan.directory
    if (d / "ca.pem").exists() and not force:
        raise UserError(f"{d / 'ca.pem'} already exists; pass --force to replace the CA and every certificate")
    (d / "devices").mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("whisper-fleet dev CA")
    ca_cert = _issue("whisper-fleet dev CA", ca_key, ca_key, ca_name, plan.days, ca=True)
    written = [d / "ca.pem", d / "ca.key"]
    (d / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(d / "ca.key", ca_key)

    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in plan.server_names]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(plan.server_names[0], server_key, ca_key, ca_name, plan.days, sans=sans)
    (d / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(d / "server.key", server_key)
    written += [d / "server.pem", d / "server.key"]

    for device in plan.devices:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(device, key, ca_key, ca_name, plan.days, client=True)
        (d / "devices" / f"{device}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(d / "devices" / f"{device}.key", key)
        written += [d / "devices" / f"{device}.pem", d / "devices" / f"{device}.key"]
    return written
