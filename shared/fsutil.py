"""Small file helpers both sides use: crash-safe replacement of a file, and reading a secret from a file."""

from __future__ import annotations

import os
from pathlib import Path

from shared.errors import UserError


def atomic_write(path: Path, data: bytes) -> None:
    """Write-then-rename, fsynced: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_secret(path: Path | str, what: str = "") -> str:
    """A password or token kept in a file (never on the command line): its text without surrounding whitespace.

    `what` names the file in the error: "cannot read {what} {path}: {reason}"."""
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise UserError(f"cannot read {what + ' ' if what else ''}{path}: {exc.strerror}") from None
