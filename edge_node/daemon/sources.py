"""Where the daemon's audio comes from: one file, a directory files arrive in, or raw PCM16 on stdin.

Each source yields `AudioChunk`s of 16 kHz mono float32. The stream source cuts the endless input at a quiet
moment every `chunk_s` seconds so memory stays bounded whatever the input's length.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from shared import audio, audio_files
from shared.errors import UserError

log = logging.getLogger(__name__)

PARTIAL_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload")


@dataclass(frozen=True)
class AudioChunk:
    key: str  # stable identity of the audio: a content hash for files, a stream id plus offset for streams
    name: str  # for logs and events
    offset_s: float  # where the chunk starts in its source
    samples: np.ndarray
    last: bool = True  # the last chunk of its file or stream


def file_key(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()[:16]


def read_file(path: Path) -> AudioChunk:
    key = file_key(path)
    return AudioChunk(key, str(path), 0.0, audio_files.load_audio(path))


class ProcessedLog:
    """Content keys of files fully handed over (transcribed, escalations in the outbox), so a restart skips them."""

    def __init__(self, path: Path) -> None:
        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._done = set(path.read_text().split()) if path.exists() else set()

    def __contains__(self, key: str) -> bool:
        return key in self._done

    def add(self, key: str) -> None:
        """Remember `key`; on a full disk only in memory (logged): the file is then read again after a restart,
        which repeats its segment events under the same ids (the outbox and the cloud dedupe its escalations)."""
        self._done.add(key)
        try:
            with self._path.open("a") as f:
                f.write(key + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            log.warning("cannot record %s as processed in %s (%s): it will be read again after a restart",
                        key, self._path, exc.strerror or exc)


def watch_directory(
    directory: Path, processed: ProcessedLog, stop: threading.Event, poll_s: float = 0.5
) -> Iterator[AudioChunk]:
    """Yield files as they arrive (oldest first), once each; a file is taken when its size holds still."""
    if not directory.is_dir():
        raise UserError(f"--source {directory}: not a directory")
    sizes: dict[Path, int] = {}
    failed: set[tuple[Path, float]] = set()
    while not stop.is_set():
        entries = sorted(
            (p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")
             and not p.name.endswith(PARTIAL_SUFFIXES)),
            key=lambda p: (p.stat().st_mtime, p.name),
        )
        for path in entries:
            if stop.is_set():
                return
            size = path.stat().st_size
            if sizes.get(path) != size:  # new or still growing: look again next round
                sizes[path] = size
                continue
            mark = (path, path.stat().st_mtime)
            if mark in failed:
                continue
            try:
                key = file_key(path)
                if key in processed:
                    continue
                yield AudioChunk(key, str(path), 0.0, audio_files.load_audio(path))
            except UserError as exc:
                failed.add(mark)  # logged once, not every poll
                log.error("skipping %s", exc)
        stop.wait(poll_s)


def _quietest_cut(samples: np.ndarray, lo: int, hi: int, frame: int = 1600) -> int:
    """Index of the quietest 100 ms frame between lo and hi: cut there, not in the middle of a word."""
    if hi - lo < frame:
        return hi
    n = (hi - lo) // frame
    frames = samples[lo : lo + n * frame].reshape(n, frame)
    return lo + int(np.argmin((frames**2).mean(axis=1))) * frame + frame // 2


def read_pcm16_stream(
    stream: BinaryIO, stop: threading.Event, chunk_s: float = 20.0, search_s: float = 5.0, stream_id: str = ""
) -> Iterator[AudioChunk]:
    """Raw little-endian PCM16 16 kHz mono. Odd trailing bytes wait for their partner; at the end one is dropped."""
    sid = stream_id or f"stream{int(time.time() * 1000)}"
    target = int(chunk_s * audio.SAMPLE_RATE)
    search = int(search_s * audio.SAMPLE_RATE)
    pending = b""
    buf = np.zeros(0, np.float32)
    offset = 0  # samples already emitted
    read = getattr(stream, "read1", stream.read)
    while not stop.is_set():
        data = read(65536)
        if not data:
            break
        data = pending + data
        if len(data) % 2:
            data, pending = data[:-1], data[-1:]
        else:
            pending = b""
        buf = np.concatenate([buf, np.frombuffer(data, "<i2").astype(np.float32) / 32768.0])
        while buf.size >= target + search:
            cut = _quietest_cut(buf, target, target + search)
            yield AudioChunk(f"{sid}-{offset}", f"stdin@{offset / audio.SAMPLE_RATE:.1f}s",
                             offset / audio.SAMPLE_RATE, buf[:cut], last=False)
            offset += cut
            buf = buf[cut:]
    if pending:
        log.warning("stdin ended with an odd byte count: dropped the last byte (PCM16 needs 2 bytes per sample)")
    if buf.size:
        yield AudioChunk(f"{sid}-{offset}", f"stdin@{offset / audio.SAMPLE_RATE:.1f}s",
                         offset / audio.SAMPLE_RATE, buf, last=True)
