"""Network addresses as the command lines take them: `HOST:PORT`."""

from __future__ import annotations

from shared.errors import UserError


def parse_host_port(value: str, default_port: int | None = None, *, what: str = "address") -> tuple[str, int]:
    """`HOST:PORT` -> (host, port); a bare `HOST` takes `default_port` when one is given.

    The port is what follows the last colon, so `[::1]:1883` keeps its brackets in the host. `what` names the
    value in the error (e.g. "--broker"); anything else than a host and a port in 1..65535 is a UserError.
    """
    host, sep, port = value.rpartition(":")
    if not sep and default_port is not None and value:
        host, port = value, str(default_port)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{what} {value!r}: expected HOST:PORT (a host name or address and a port 1-65535)")
    return host, int(port)
