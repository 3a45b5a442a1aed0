"""Run the REST app with uvicorn on the running event loop (the one grpc.aio uses), not in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from shared.errors import UserError
from shared.net import is_loopback, target_host

if TYPE_CHECKING:
    import uvicorn

    from cloud_service.api.server import EscalationServicer
    from cloud_service.config import CloudConfig

log = logging.getLogger(__name__)


def check_http_listen(config: CloudConfig, address: str, warn: bool = True) -> None:
    """Plaintext HTTP off loopback carries bearer tokens in the clear: refused unless --insecure (then warned
    about, once: `create_server` checks before the model loads with warn=False, `start_http` when it binds)."""
    split_address(address)
    if is_loopback(target_host(address)) or config.tls is not None:
        return
    if not config.insecure:
        raise UserError(f"--http {address} is not a loopback address: give --tls-cert and --tls-key (HTTPS), "
                        "or --insecure to serve plaintext HTTP (labs only)")
    if warn:
        log.warning("--insecure: serving plaintext HTTP on %s; tokens and audio cross the network unencrypted",
                    address)


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UserError(f"--http {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


async def start_http(config: CloudConfig, servicer: EscalationServicer, address: str) -> tuple[uvicorn.Server,
                                                                                               asyncio.Task[Any]]:
    """Start serving on `address` (port 0: any free one); returns the server (its port in .servers) and the task
    running it. Stop with `server.should_exit = True` and await the task."""
    import uvicorn

    from cloud_service.http.app import create_app

    check_http_listen(config, address)
    host, port = split_address(address)
    tls: dict[str, Any] = {}
    if config.tls is not None:
        tls = {"ssl_certfile": str(config.tls.cert_file), "ssl_keyfile": str(config.tls.key_file)}
    uconfig = uvicorn.Config(create_app(servicer), host=host, port=port, log_level="warning", lifespan="off",
                             timeout_keep_alive=5, limit_concurrency=256, **tls)
    server = uvicorn.Server(uconfig)
    # _serve owns SIGTERM/SIGINT (loop.add_signal_handler); uvicorn's signal.signal would replace them.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        if task.done():  # uvicorn logs a bind error and raises SystemExit
            raise UserError(f"cannot serve HTTP on {address} (see the log above)")
        await asyncio.sleep(0.01)
    return server, task


def bound_port(server: uvicorn.Server) -> int:
    return int(server.servers[0].sockets[0].getsockname()[1])


async def stop_http(server: uvicorn.Server, task: asyncio.Task[Any]) -> None:
    server.should_exit = True
    await task
