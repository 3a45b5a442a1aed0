"""The one Prometheus `/metrics` HTTP exporter, for every process that has metrics (cloud serve, worker, edge).

Plain HTTP: metrics carry no secret (device ids, counts, model names), so a non-loopback address is allowed without
TLS, but `PORT` and `:PORT` mean loopback: exposing metrics is a decision (docs/metrics.md). prometheus_client is
imported lazily, so importing this module costs nothing where no exporter is asked for.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.errors import UserError
from shared.net import parse_host_port

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


def parse_metrics_listen(value: str, what: str = "--metrics-listen") -> tuple[str, int]:
    """`HOST:PORT`, or `PORT` / `:PORT` on 127.0.0.1; UserError naming `what` otherwise."""
    if value.isdigit():
        value = f"127.0.0.1:{value}"
    elif value.startswith(":"):
        value = f"127.0.0.1{value}"
    host, port = parse_host_port(value, what=what)
    return host.strip("[]"), port


@dataclass(frozen=True)
class Exporter:
    """A running /metrics HTTP server; `close` stops it and frees the port."""

    server: Any
    thread: threading.Thread
    port: int

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def start_exporter(registry: CollectorRegistry, listen: str) -> Exporter:
    """Serve `registry` on http://HOST:PORT/metrics in a daemon thread; UserError when the port is taken."""
    from prometheus_client import start_http_server

    host, port = parse_metrics_listen(listen)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise UserError(f"--metrics-listen {listen}: cannot listen ({exc.strerror or exc})") from None
    return Exporter(server, thread, server.server_address[1])
