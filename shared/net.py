"""Network addresses as the command lines take them (`HOST:PORT`), the one "is this loopback" rule, and
redaction of credentials in URLs before they reach an error or a log line."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from shared.errors import UserError

INSECURE_HELP = "allow plaintext gRPC/MQTT to non-loopback addresses (labs only)"


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


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only: 127.0.0.0/8, ::1 (also IPv4-mapped) or "localhost".

    Any other name is not loopback, even one that resolves to 127.0.0.1 today: DNS is not ours to trust, and
    the check must not depend on a lookup."""
    h = host.strip().strip("[]").rstrip(".").lower()
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        addr = ipaddress.ip_address(h.split("%", 1)[0])  # drop an IPv6 zone id (fe80::1%eth0)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def target_host(target: str) -> str:
    """The host of a gRPC target: `HOST:PORT`, `[V6]:PORT`, `dns:[//AUTH/]HOST:PORT`, `ipv4:`/`ipv6:ADDR:PORT`;
    a Unix socket (`unix:PATH`) is this machine, so it reads as "localhost". Anything it cannot take apart (an
    address list) comes back whole, which `is_loopback` then refuses: the safe answer."""
    t = target.strip()
    if t.startswith(("unix:", "unix-abstract:")):
        return "localhost"
    for scheme in ("dns:", "ipv4:", "ipv6:"):
        if t.startswith(scheme):
            t = t[len(scheme):]
            if t.startswith("//"):  # dns://AUTHORITY/HOST:PORT: the authority is the resolver, not the peer
                t = t[2:].partition("/")[2]
            break
    if t.startswith("["):
        return t[1:].partition("]")[0]
    host, sep, port = t.rpartition(":")
    if not sep or not port.isdigit() or host.count(":"):  # a bare host, or a bare IPv6 address
        return t
    return host


def require_tls(host: str, *, tls: bool, insecure: bool, what: str, tls_flag: str) -> None:
    """Refuse plaintext to a non-loopback `host` unless the operator said `--insecure`.

    `what` names the link in the error ("gRPC to the cloud 10.0.0.5:50051"), `tls_flag` the option that turns
    TLS on for it (`--tls-ca`)."""
    if tls or insecure or is_loopback(host):
        return
    raise UserError(f"{what}: {host} is not a loopback address, so plaintext is refused; give {tls_flag} "
                    f"(TLS) or --insecure (labs only)")


_USERINFO = re.compile(r"(?<=//)[^/\s?#]*@")  # greedy: a password with '@' in it is hidden whole
_PASSWORD_PARAM = re.compile(r"(?i)([?&](?:password|passwd|pass)=)[^&#\s]*")


def redact_url(url: str) -> str:
    """`url` with its credentials hidden: `redis://user:pw@host/0` -> `redis://***@host/0`, and a
    `?password=` query parameter -> `?password=***`. Safe on anything (a string that is no URL is returned
    unchanged but for those two patterns)."""
    return _PASSWORD_PARAM.sub(r"\1***", _USERINFO.sub("***@", url))


def url_has_password(url: str) -> bool:
    """Whether `url` carries a password (in its user info or as a `password=` query parameter)."""
    try:
        if urlsplit(url).password:
            return True
    except ValueError:
        pass
    return bool(_PASSWORD_PARAM.search(url))
