"""TLS and mTLS from config: certificates made here with `cryptography`, a real server on port 0."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cloud_service.asr.model import AsrModel
from cloud_service.config import TlsConfig
from tests.integration.cloud_fixtures import ServerThread, base_asr, cloud_config  # noqa: F401

pytestmark = pytest.mark.slow


def _cert(
    name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, ca: bool = False
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    return cert, key


def _write(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    c, k = directory / f"{name}.crt", directory / f"{name}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return c, k


def _healthy(channel: grpc.Channel) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.RpcError:
        return False
    return True


def test_tls_and_mtls(base_asr: AsrModel, tmp_path: Path) -> None:  # noqa: F811
    ca = _cert("test-ca", None, ca=True)
    ca_file, _ = _write(tmp_path, "ca", *ca)
    server_crt, server_key = _write(tmp_path, "server", *_cert("localhost", ca))
    client_crt, client_key = _write(tmp_path, "client", *_cert("device-1", ca))
    stranger_crt, stranger_key = _write(
        tmp_path, "stranger", *_cert("device-x", _cert("other-ca", None, ca=True))
    )
    root = ca_file.read_bytes()

    tls = TlsConfig(server_crt, server_key)
    with ServerThread(cloud_config(None, auth=False, tls=tls), base_asr) as srv:
        target = f"localhost:{srv.port}"
        assert _healthy(grpc.secure_channel(target, grpc.ssl_channel_credentials(root)))
        assert not _healthy(grpc.insecure_channel(target))  # plaintext refused

    mtls = TlsConfig(server_crt, server_key, client_ca_file=ca_file)
    with ServerThread(cloud_config(None, auth=False, tls=mtls), base_asr) as srv:
        target = f"localhost:{srv.port}"
        good = grpc.ssl_channel_credentials(root, client_key.read_bytes(), client_crt.read_bytes())
        assert _healthy(grpc.secure_channel(target, good))
        assert not _healthy(grpc.secure_channel(target, grpc.ssl_channel_credentials(root)))  # no client cert
        bad = grpc.ssl_channel_credentials(root, stranger_key.read_bytes(), stranger_crt.read_bytes())
        assert not _healthy(grpc.secure_channel(target, bad))  # a certificate from another CA
