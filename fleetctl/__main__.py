"""`fleetctl` entry point: parse arguments, run the command."""

from __future__ import annotations

import sys

from fleetctl.cli import build_parser
from shared.cli import run_cli, setup_logging


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    return run_cli(lambda: int(args.func(args)))


if __name__ == "__main__":
    sys.exit(main())
