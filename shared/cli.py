"""Small helpers shared by the command-line entry points."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from shared.errors import UserError


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
