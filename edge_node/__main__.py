"""`edge-node` entry point: parse, build the config, run."""

from __future__ import annotations

import argparse
import sys

from edge_node.cli.agent import add_agent_parser
from edge_node.cli.run import add_run_parser
from edge_node.cli.transcribe import add_transcribe_parser
from edge_node.cli.wyoming import add_wyoming_parser
from shared.cli import run_cli, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-node", description="Whisper edge node")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    add_transcribe_parser(sub)
    add_run_parser(sub)
    add_agent_parser(sub)
    add_wyoming_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_cli(lambda: int(args.func(args)))


if __name__ == "__main__":
    sys.exit(main())
