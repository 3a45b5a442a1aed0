"""`edge-node wyoming`, black-box: the real process on a free port, driven by the wyoming package's own client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from wyoming.asr import TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info

from evaluation.scoring import words
from tests.edge_fixtures import english_prompts
from tests.integration.wyoming_fixtures import final, pcm, utterance, wyoming_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(edge_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    log = tmp_path_factory.mktemp("wy") / "wyoming.log"
    with wyoming_process(edge_artifact, log, "--max-audio-s", "20", "--idle-timeout-s", "5") as port:
        yield port


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
    events = asyncio.run(utterance(server, pcm(prompt.wav, rate), rate, transcribe=rate == 16000))
    types = [e.type for e in events]
    assert types[0] == TranscriptStart().event().type and types[-1] == TranscriptStop().event().type
    chunks = [TranscriptChunk.from_event(e).text for e in events if TranscriptChunk.is_type(e.type)]
    last = final(events)
    assert chunks and " ".join(chunks).split() == last.text.split()
    assert words(last.text, "en") == words(prompt.text, "en"), (last.text, prompt.text)
    assert last.context == {"source": "edge"} and last.language == "en"


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
    ok = asyncio.run(utterance(server, pcm(prompt.wav, 16000), 16000))
    assert words(final(ok).text, "en") == words(prompt.text, "en")


def test_too_much_audio_is_refused(server: int) -> None:
    events = asyncio.run(utterance(server, bytes(16000 * 2 * 25), 16000))  # 25 s > --max-audio-s 20
    assert Error.from_event(events[-1]).code == "audio-too-long"
