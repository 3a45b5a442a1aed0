"""JSON Lines events out of the daemon: one object per line, flushed at once, to stdout or a file."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from shared.errors import UserError


class EventWriter:
    def __init__(self, path: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._own = path is not None
        self._out: TextIO = sys.stdout if path is None else _open(path)

    def emit(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()

    def close(self) -> None:
        if self._own:
            self._out.close()


def _open(path: Path) -> TextIO:
    """The events file, appended to; one that cannot be opened is the user's to fix (a wrong path, a full disk)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("a", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"--events {path}: cannot open it for writing ({exc.strerror or exc})") from None
