"""`fleetctl certs init` makes a CA whose server certificate a real TLS handshake accepts."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest

from fleetctl.certs import CertPlan, init_certs
from shared.errors import UserError


def test_certs_handshake_with_mtls(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    init_certs(CertPlan(d, devices=("edge-1",)))
    assert stat.S_IMODE((d / "ca.key").stat().st_mode) == 0o600
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(d / "server.pem", d / "server.key")
    server_ctx.load_verify_locations(d / "ca.pem")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
    client_ctx.load_cert_chain(d / "devices" / "edge-1.pem", d / "devices" / "edge-1.key")

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    peer: dict[str, object] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            peer["cert"] = tls.getpeercert()
            tls.sendall(b"ok")

    t = threading.Thread(target=serve)
    t.start()
    with socket.create_connection(("127.0.0.1", port)) as raw, client_ctx.wrap_socket(
        raw, server_hostname="localhost"
    ) as tls:
        assert tls.recv(2) == b"ok"
    t.join(5)
    listener.close()
    subject = dict(x[0] for x in peer["cert"]["subject"])  # type: ignore[index]
    assert subject["commonName"] == "edge-1"


def test_certs_refuse_to_overwrite(tmp_path: Path) -> None:
    init_certs(CertPlan(tmp_path))
    with pytest.raises(UserError, match="already exists"):
        init_certs(CertPlan(tmp_path))
