"""Small file helpers both sides use: crash-safe replacement of a file, and reading a secret from a file."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from shared.errors import UserError

log = logging.getLogger(__name__)

SECRET_MODE = 0o600  # keys, tokens and passwords: readable and writable by their owner only


def atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write-then-rename, fsynced: a crash leaves the old file or the new one, never half of one.

    `mode` (e.g. SECRET_MODE) is the new file's exact permission bits, whatever the umask and whatever mode a
    file it replaces had: the temporary file is created with it, so the data is never readable by others even
    for a moment, and chmod-ed to it in case the umask took bits away. None: the umask's default."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)  # a leftover tmp file from a crash keeps its old mode otherwise
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def warn_if_exposed(path: Path | str, what: str = "secret file") -> None:
    """Log a warning when a secret's file can be read by its group or by others (never its content)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return  # the read that follows reports a missing file
    if mode & 0o077:
        log.warning("%s %s is readable by group or others (mode %04o): chmod 600 it", what, path, mode)


def read_secret(path: Path | str, what: str = "") -> str:
    """A password or token kept in a file (never on the command line): its text without surrounding whitespace.

    `what` names the file in the error: "cannot read {what} {path}: {reason}". A file that its group or others
    can read is used, with a warning in the log."""
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise UserError(f"cannot read {what + ' ' if what else ''}{path}: {exc.strerror}") from None
    warn_if_exposed(path, what or "secret file")
    return text
