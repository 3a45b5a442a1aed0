"""`edge-node wyoming`, black-box: the real process on a free port, driven by the wyoming package's own client."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info

from evaluation.scoring import words
from testkit.servers import free_port
from tests.edge_fixtures import english_prompts

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(edge_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    log = tmp_path_factory.mktemp("wy") / "wyoming.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_node", "wyoming", "--uri", f"tcp://127.0.0.1:{port}", "--model-dir",
             str(edge_artifact), "--max-audio-s", "20", "--idle-timeout-s", "5", "--threads", "1"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        _wait_port(port, proc, log)
        yield port
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0, log.read_text()  # SIGTERM stops it cleanly


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


def _pcm(wav: Path, rate: int) -> bytes:
    data, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if sr != rate:
        n = round(mono.size * rate / sr)
        mono = np.interp(np.linspace(0, mono.size - 1, n), np.arange(mono.size), mono).astype(np.float32)
    return bytes((np.clip(mono, -1, 1) * 32767).astype("<i2").tobytes())


async def _utterance(port: int, pcm: bytes, rate: int, transcribe: bool = True) -> list[Event]:
    client = AsyncTcpClient("127.0.0.1", port)
    await client.connect()
    try:
        if transcribe:
            await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=rate, width=2, channels=1).event())
        step = rate // 10 * 2  # 100 ms chunks
        try:
            for i in range(0, len(pcm), step):
                chunk = AudioChunk(rate=rate, width=2, channels=1, audio=pcm[i : i + step])
                await client.write_event(chunk.event())
            await client.write_event(AudioStop().event())
        except ConnectionError:
            pass  # the server refused the audio and closed its side: its error event is still to be read
        events: list[Event] = []
        while True:
            ev = await asyncio.wait_for(client.read_event(), 120)
            assert ev is not None, events
            events.append(ev)
            if TranscriptStop.is_type(ev.type) or Error.is_type(ev.type):
                return events
    finally:
        await client.disconnect()


def _final(events: list[Event]) -> Any:
    return next(Transcript.from_event(e) for e in events if Transcript.is_type(e.type))


def test_describe_info(server: int) -> None:
    async def go() -> Info:
        client = AsyncTcpClient("127.0.0.1", server)
        await client.connect()
        await client.write_event(Describe().event())
        ev = await asyncio.wait_for(client.read_event(), 30)
        await client.disconnect()
        assert ev is not None and Info.is_type(ev.type)
        return Info.from_event(ev)

    info = asyncio.run(go())
    asr = info.asr[0]
    assert asr.supports_transcript_streaming
    assert asr.models[0].languages == ["en"] and asr.models[0].name == "tiny.en-int8"


@pytest.mark.parametrize("rate", [8000, 16000])
def test_prompt_transcribed_with_streaming(server: int, rate: int) -> None:
    prompt = english_prompts(1, min_words=5)[0]
    events = asyncio.run(_utterance(server, _pcm(prompt.wav, rate), rate, transcribe=rate == 16000))
    types = [e.type for e in events]
    assert types[0] == TranscriptStart().event().type and types[-1] == TranscriptStop().event().type
    chunks = [TranscriptChunk.from_event(e).text for e in events if TranscriptChunk.is_type(e.type)]
    final = _final(events)
    assert chunks and " ".join(chunks).split() == final.text.split()
    assert words(final.text, "en") == words(prompt.text, "en"), (final.text, prompt.text)
    assert final.context == {"source": "edge"}


async def _raw(port: int, data: bytes) -> list[Event]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    from wyoming.event import async_read_event

    out = []
    while (ev := await asyncio.wait_for(async_read_event(reader), 30)) is not None:
        out.append(ev)
    writer.close()
    return out


@pytest.mark.parametrize(("data", "code"), [
    (b"\x00\xffgarbage not json\n", "bad-event"),
    (b'{"type": "audio-chunk", "payload_length": 999999999}\n', "payload-too-large"),
    (b"x" * 100_000, "header-too-large"),
])
def test_bad_client_gets_error_and_server_keeps_serving(server: int, data: bytes, code: str) -> None:
    events = asyncio.run(_raw(server, data))
    assert [Error.from_event(e).code for e in events] == [code]
    prompt = english_prompts(1, min_words=5)[0]
    ok = asyncio.run(_utterance(server, _pcm(prompt.wav, 16000), 16000))
    assert words(_final(ok).text, "en") == words(prompt.text, "en")


def test_too_much_audio_is_refused(server: int) -> None:
    events = asyncio.run(_utterance(server, bytes(16000 * 2 * 25), 16000))  # 25 s > --max-audio-s 20
    assert Error.from_event(events[-1]).code == "audio-too-long"
