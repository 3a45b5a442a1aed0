"""Helpers for the `edge-node wyoming` tests: the real process on a free port, and the wyoming package's own
client sending one utterance."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from wyoming.asr import Transcribe, Transcript, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event

from testkit.escalation import daemon_env
from testkit.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def wyoming_process(model_dir: Path, log: Path, *extra: str) -> Iterator[int]:
    """`edge-node wyoming` on a free loopback port (stdout and stderr to `log`) until the block ends; yields the
    port. It must stop cleanly on SIGTERM (exit 0)."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_node", "wyoming", "--uri", f"tcp://127.0.0.1:{port}", "--model-dir",
             str(model_dir), "--threads", "1", *extra],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=daemon_env(),
        )
    try:
        _wait_port(port, proc, log)
        yield port
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=30) == 0, log.read_text()  # SIGTERM stops it cleanly
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("wyoming server did not start: " + log.read_text())


def pcm(wav: Path, rate: int) -> bytes:
    """A recording as mono PCM16 at `rate` (linear interpolation: enough for speech tests)."""
    data, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if sr != rate:
        n = round(mono.size * rate / sr)
        mono = np.interp(np.linspace(0, mono.size - 1, n), np.arange(mono.size), mono).astype(np.float32)
    return bytes((np.clip(mono, -1, 1) * 32767).astype("<i2").tobytes())


async def utterance(port: int, audio: bytes, rate: int, transcribe: bool = True,
                    timeout_s: float = 120) -> list[Event]:
    """transcribe? -> audio-start -> 100 ms chunks -> audio-stop; the events received up to transcript-stop or
    an error."""
    client = AsyncTcpClient("127.0.0.1", port)
    await client.connect()
    try:
        if transcribe:
            await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=rate, width=2, channels=1).event())
        step = rate // 10 * 2  # 100 ms chunks
        try:
            for i in range(0, len(audio), step):
                chunk = AudioChunk(rate=rate, width=2, channels=1, audio=audio[i : i + step])
                await client.write_event(chunk.event())
            await client.write_event(AudioStop().event())
        except ConnectionError:
            pass  # the server refused the audio and closed its side: its error event is still to be read
        events: list[Event] = []
        while True:
            ev = await asyncio.wait_for(client.read_event(), timeout_s)
            assert ev is not None, events
            events.append(ev)
            if TranscriptStop.is_type(ev.type) or Error.is_type(ev.type):
                return events
    finally:
        await client.disconnect()


def final(events: list[Event]) -> Any:
    """The `transcript` event among `events`, parsed."""
    return next(Transcript.from_event(e) for e in events if Transcript.is_type(e.type))
