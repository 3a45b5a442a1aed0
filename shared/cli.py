"""Small helpers shared by the command-line entry points."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping

from shared.errors import UserError
from shared.fsutil import read_secret
from shared.net import redact_url, url_has_password

log = logging.getLogger(__name__)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_cli(func: Callable[[], int]) -> int:
    """Run a CLI body: user errors become one line on stderr and a non-zero exit, never a traceback."""
    try:
        return func()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def add_redis_options(p: argparse._ActionsContainer, env: str, default: str | None = None) -> None:
    """`--redis URL` and `--redis-url-file FILE` (one of them); the URL may also come from $`env`.

    A Redis password belongs in the file or the environment: argv is visible to every user in `ps`."""
    shown = f" (default ${env}" + (f", else {default})" if default else ")")
    p.add_argument("--redis", metavar="URL", help=f"redis://[:PASSWORD@]HOST:PORT/DB{shown}; a password here "
                   "is visible in ps: prefer --redis-url-file")
    p.add_argument("--redis-url-file", metavar="FILE", help="file holding the redis:// URL (keeps its password "
                   "off the command line)")
    p.set_defaults(redis_env=env, redis_default=default)


def redis_url(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> str | None:
    """The Redis URL `add_redis_options` describes: the file, else --redis (warned about when it holds a
    password), else the environment variable, else the default (None when there is none)."""
    env = os.environ if environ is None else environ
    if args.redis_url_file and args.redis:
        raise UserError("give --redis or --redis-url-file, not both")
    if args.redis_url_file:
        url = read_secret(args.redis_url_file, "the Redis URL file")
        if not url:
            raise UserError(f"the Redis URL file {args.redis_url_file} is empty")
        return url
    if args.redis:
        if url_has_password(args.redis):
            log.warning("--redis %s: a password on the command line is visible to every user (ps); use "
                        "--redis-url-file or $%s", redact_url(args.redis), args.redis_env)
        return str(args.redis)
    return env.get(args.redis_env) or args.redis_default
