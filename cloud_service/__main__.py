"""`cloud-service` entry point: parse arguments, build the one CloudConfig, run `serve` or `worker`."""

from __future__ import annotations

import sys

from cloud_service.cli import build_parser, config_from_args, run
from shared.cli import run_cli, setup_logging


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_cli(lambda: run(args, config_from_args(args)))


if __name__ == "__main__":
    sys.exit(main())
