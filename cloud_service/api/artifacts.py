"""Edge artifacts served by FetchModel: files listed in an artifact's manifest.json, read in chunks.

Only regular files inside the artifact directory are served, reached without following any symbolic link: every
path component is opened relative to its parent with O_NOFOLLOW (openat), and the opened file must be a regular
file (fstat). So a `manifest.sig` linked to /etc/hostname (issue 13, finding 9b), a listed file linked elsewhere,
even inside the artifact, or a FIFO that would block the server are refused, with no race between the check and
the read. The artifact directory itself may be a link (an operator's `current -> tiny.en-int8-v3`): it is resolved
once, and everything below it is checked.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from shared.manifest import MAX_MANIFEST_BYTES

CHUNK_BYTES = 256 * 1024
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer (it has no effect on regular files).
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class ArtifactNotFoundError(LookupError):
    pass


class ArtifactRefusedError(ArtifactNotFoundError):
    """The file exists but is never served (a symbolic link, not a regular file, a path leaving the artifact).
    A subclass of ArtifactNotFoundError, so callers answer it like a missing file: NOT_FOUND, no content."""


@dataclass(frozen=True)
class ArtifactFile:
    path: Path
    name: str  # as listed in the manifest
    size: int
    sha256: str
    directory: Path  # the resolved artifact directory `name` is opened under


def _safe_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def open_inside(directory: Path, rel: str, artifact: str) -> int:
    """A read-only fd of the regular file `rel` under `directory`, no component of it a symbolic link.
    Raises ArtifactNotFoundError (missing) or ArtifactRefusedError (link, special file, unsafe path)."""
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or any(p in ("", ".", "..") for p in rel.split("/")):
        raise ArtifactRefusedError(f"artifact {artifact!r}: unsafe path {rel!r}; refused")
    parts = pure.parts
    fd = os.open(directory, _DIR_FLAGS)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                nxt = os.open(part, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _refusal(artifact, "/".join(parts[:i + 1]), rel, exc, (fd, part), last) from None
            os.close(fd)
            fd = nxt
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ArtifactRefusedError(f"artifact {artifact!r}: {rel} is not a regular file; refused")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _refusal(artifact: str, reached: str, rel: str, exc: OSError, at: tuple[int, str], last: bool) -> Exception:
    """The error for a failed open of `reached` (a prefix of `rel`; `at`: its parent's fd and its own name): a
    link, something other than a directory or regular file, or nothing there."""
    try:
        mode = os.lstat(at[1], dir_fd=at[0]).st_mode
    except OSError:
        return ArtifactNotFoundError(f"artifact {artifact!r} has no file {rel!r}")
    if stat.S_ISLNK(mode) or exc.errno == errno.ELOOP:
        return ArtifactRefusedError(f"artifact {artifact!r}: {reached} is a symbolic link; refused (FetchModel "
                                    f"serves regular files inside the artifact only)")
    kind = "a regular file" if last else "a directory"
    return ArtifactRefusedError(f"artifact {artifact!r}: {reached} is not {kind}; refused")


def _read_small(directory: Path, rel: str, artifact: str, limit: int) -> bytes:
    fd = open_inside(directory, rel, artifact)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ArtifactRefusedError(f"artifact {artifact!r}: {rel} is larger than {limit} bytes; refused")
    return data


def resolve(root: Path, name: str, version: str, file: str) -> ArtifactFile:
    """Find `file` of artifact `name` under `root`. Only files the manifest lists (plus the manifest and its
    signature) are served, and only as `open_inside` allows."""
    if not _safe_name(name):
        raise ArtifactNotFoundError(f"no artifact named {name!r}")
    try:
        directory = (root / name).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # missing, a link loop, a NUL in the name
        raise ArtifactNotFoundError(f"no artifact named {name!r}") from None
    if not directory.is_dir():
        raise ArtifactNotFoundError(f"no artifact named {name!r}")
    try:
        raw = _read_small(directory, MANIFEST, name, MAX_MANIFEST_BYTES)
    except ArtifactRefusedError:
        raise
    except (ArtifactNotFoundError, OSError):
        raise ArtifactNotFoundError(f"no artifact named {name!r}") from None
    try:
        doc = json.loads(raw)
        files = doc["files"]
    except (ValueError, KeyError, TypeError):
        raise ArtifactNotFoundError(f"no artifact named {name!r} (its {MANIFEST} is malformed)") from None
    if version and str(doc.get("version")) != version:
        raise ArtifactNotFoundError(f"artifact {name!r} has version {doc.get('version')!r}, not {version!r}")
    if file == MANIFEST:
        return ArtifactFile(directory / MANIFEST, file, len(raw), hashlib.sha256(raw).hexdigest(), directory)
    if file == SIGNATURE:
        try:
            data = _read_small(directory, SIGNATURE, name, 64 * 1024)
        except ArtifactRefusedError:
            raise
        except (ArtifactNotFoundError, OSError):
            raise ArtifactNotFoundError(f"artifact {name!r} has no {SIGNATURE}") from None
        return ArtifactFile(directory / SIGNATURE, file, len(data), hashlib.sha256(data).hexdigest(), directory)
    info = files.get(file) if isinstance(files, dict) else None
    if not isinstance(info, dict):
        raise ArtifactNotFoundError(f"artifact {name!r} has no file {file!r}")
    fd = open_inside(directory, file, name)
    try:
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    return ArtifactFile(directory / file, file, size, str(info.get("sha256", "")), directory)


def chunks(art: ArtifactFile, offset: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, bytes]]:
    """(offset, data) pieces from `offset` to the end of the file, opened again as `open_inside` allows."""
    artifact = art.directory.name
    with os.fdopen(open_inside(art.directory, art.name, artifact), "rb") as f:
        f.seek(offset)
        pos = offset
        while data := f.read(chunk_bytes):
            yield pos, data
            pos += len(data)
