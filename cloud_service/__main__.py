"""`cloud-service` entry point."""

from __future__ import annotations

import argparse
import sys

from shared.cli import run_cli, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloud-service", description="Whisper cloud service")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_subparsers(dest="command", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_cli(lambda: int(args.func(args)))


if __name__ == "__main__":
    sys.exit(main())
