"""JSON Lines events out of the daemon: one object per line, flushed at once, to stdout or a file."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any, TextIO


class EventWriter:
    def __init__(self, path: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._own = path is not None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._out: TextIO = path.open("a", encoding="utf-8") if path is not None else sys.stdout

    def emit(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()

    def close(self) -> None:
        if self._own:
            self._out.close()
