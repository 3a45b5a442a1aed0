"""Edge artifacts served by FetchModel: files listed in an artifact's manifest.json, read in chunks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CHUNK_BYTES = 256 * 1024
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"


class ArtifactNotFoundError(LookupError):
    pass


@dataclass(frozen=True)
class ArtifactFile:
    path: Path
    name: str  # as listed in the manifest
    size: int
    sha256: str


def _safe_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def resolve(root: Path, name: str, version: str, file: str) -> ArtifactFile:
    """Find `file` of artifact `name` under `root`. Only files the manifest lists (plus the manifest and its
    signature) are served, which rules out path traversal."""
    if not _safe_name(name):
        raise ArtifactNotFoundError(f"no artifact named {name!r}")
    directory = root / name
    try:
        raw = (directory / MANIFEST).read_bytes()
        doc = json.loads(raw)
        files = doc["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ArtifactNotFoundError(f"no artifact named {name!r}") from None
    if version and str(doc.get("version")) != version:
        raise ArtifactNotFoundError(f"artifact {name!r} has version {doc.get('version')!r}, not {version!r}")
    if file == MANIFEST:
        return ArtifactFile(directory / MANIFEST, file, len(raw), hashlib.sha256(raw).hexdigest())
    if file == SIGNATURE:
        sig = directory / SIGNATURE
        if not sig.is_file():
            raise ArtifactNotFoundError(f"artifact {name!r} has no {SIGNATURE}")
        data = sig.read_bytes()
        return ArtifactFile(sig, file, len(data), hashlib.sha256(data).hexdigest())
    info = files.get(file) if isinstance(files, dict) else None
    if not isinstance(info, dict):
        raise ArtifactNotFoundError(f"artifact {name!r} has no file {file!r}")
    path = (directory / file).resolve()
    if not path.is_relative_to(directory.resolve()) or not path.is_file():
        raise ArtifactNotFoundError(f"artifact {name!r} has no file {file!r}")
    return ArtifactFile(path, file, path.stat().st_size, str(info.get("sha256", "")))


def chunks(art: ArtifactFile, offset: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, bytes]]:
    """(offset, data) pieces from `offset` to the end of the file."""
    with art.path.open("rb") as f:
        f.seek(offset)
        pos = offset
        while data := f.read(chunk_bytes):
            yield pos, data
            pos += len(data)
