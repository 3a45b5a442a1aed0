"""`fleetctl device add` and `fleetctl oauth ...`: the cloud's Redis registries (device tokens, OAuth2 clients).

Secrets are printed once (or written to a 0600 file with --out); Redis keeps only their sha256.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from cloud_service.api.limits import check_device_id
from cloud_service.jobs.store import DeviceExists, register_device
from cloud_service.oauth import registry as oauth
from cloud_service.oauth.tokens import SCOPES, check_scopes
from shared.cli import add_redis_options, redis_url
from shared.errors import UserError
from shared.fsutil import SECRET_MODE, atomic_write
from shared.net import redact_url

if TYPE_CHECKING:
    import redis


@contextlib.contextmanager
def open_registry(args: argparse.Namespace) -> Iterator[redis.Redis]:
    """A synchronous client on the registry's Redis; Redis errors become one UserError line (password hidden)."""
    import redis

    url = redis_url(args)
    if not url:
        raise UserError("give --redis-url-file FILE, $CLOUD_REDIS_URL or --redis URL: the registry lives there")
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3.0, socket_timeout=3.0)
    except ValueError as exc:
        raise UserError(f"bad Redis URL {redact_url(url)}: {exc}") from None
    try:
        yield client
    except redis.RedisError as exc:  # the URL's password must not reach the terminal or a CI log
        raise UserError(f"cannot reach Redis at {redact_url(url)}: {exc}") from None
    finally:
        client.close()


def _show_secret(out: str | None, text: str, what: str) -> None:
    if out:
        atomic_write(Path(out), (text + "\n").encode(), mode=SECRET_MODE)
        print(f"{what} written to {out} (mode 0600)")
    else:
        print(text)


def _cmd_device_add(args: argparse.Namespace) -> int:
    try:
        check_device_id(args.name)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    with open_registry(args) as r:
        try:
            token = register_device(r, args.name, rotate=args.rotate)
        except DeviceExists:
            raise UserError(f"device {args.name!r} is registered already; --rotate replaces its token") from None
    _show_secret(args.out, token, f"token for {args.name}")  # the only time it is shown
    return 0


def _cmd_oauth_add(args: argparse.Namespace) -> int:
    try:
        oauth.check_client_id(args.name)
        scopes = check_scopes(args.scopes)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    with open_registry(args) as r:
        try:
            secret = oauth.register_client(r, args.name, scopes, rotate=args.rotate)
        except oauth.ClientExists:
            raise UserError(f"client {args.name!r} is registered already; --rotate gives it a new secret "
                            "(and revokes its tokens)") from None
    creds = json.dumps({"client_id": args.name, "client_secret": secret, "scopes": list(scopes)})
    _show_secret(args.out, creds, f"credentials of {args.name}")  # the only time the secret is shown
    return 0


def _cmd_oauth_list(args: argparse.Namespace) -> int:
    with open_registry(args) as r:
        clients = oauth.list_clients(r)
    for c in clients:
        print(f"{c.client_id}\t{' '.join(c.scopes)}")
    return 0


def _cmd_oauth_remove(args: argparse.Namespace) -> int:
    with open_registry(args) as r:
        done = oauth.remove_client(r, args.name) if args.oauth_cmd == "remove" else \
            oauth.revoke_client_tokens(r, args.name)
    if not done:
        raise UserError(f"no OAuth client {args.name!r}")
    print(f"removed client {args.name}; its tokens no longer work" if args.oauth_cmd == "remove"
          else f"revoked every token issued to {args.name} so far")
    return 0


def add_registry_commands(sub: argparse._SubParsersAction) -> None:
    dev = sub.add_parser("device", help="device registry (cloud auth)").add_subparsers(dest="device_cmd",
                                                                                       required=True)
    d = dev.add_parser("add", help="register a device; prints its bearer token once, stores only the hash")
    d.add_argument("name", help="device id")
    add_redis_options(d, "CLOUD_REDIS_URL")
    d.add_argument("--rotate", action="store_true", help="replace the token of a registered device")
    d.add_argument("--out", metavar="FILE", help="write the token to FILE (mode 0600) instead of printing it")
    d.set_defaults(func=_cmd_device_add)

    o = sub.add_parser("oauth", help="OAuth2 clients of the REST API (client credentials)").add_subparsers(
        dest="oauth_cmd", required=True)
    a = o.add_parser("add", help="register a client; prints its id and secret once (JSON), stores only the hash")
    a.add_argument("name", help="client id")
    a.add_argument("--scopes", required=True, help=f"comma-separated, of: {', '.join(SCOPES)}")
    a.add_argument("--rotate", action="store_true", help="give a registered client a new secret (revokes its "
                   "tokens)")
    a.add_argument("--out", metavar="FILE", help="write the credentials to FILE (mode 0600) instead of printing")
    a.set_defaults(func=_cmd_oauth_add)
    ls = o.add_parser("list", help="registered clients and their scopes")
    ls.set_defaults(func=_cmd_oauth_list)
    commands = [a, ls]
    for name, text in (("remove", "delete a client: its tokens stop working at once"),
                       ("revoke", "revoke every token the client holds, keeping the client")):
        rm = o.add_parser(name, help=text)
        rm.add_argument("name", help="client id")
        rm.set_defaults(func=_cmd_oauth_remove)
        commands.append(rm)
    for cmd in commands:
        add_redis_options(cmd, "CLOUD_REDIS_URL")
