"""`edge-node wyoming --cloud`, black-box: the real process escalating to a real gRPC cloud (openai-whisper base,
a real Redis, a registered device token), driven by the wyoming package's own client.

What the escalation did is read from the outside: the transcript's text, language and `context` (source,
segment id), the process's log, and the result the cloud stored in Redis under that segment id.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from wyoming.asr import TranscriptChunk

from cloud_service.asr.model import AsrModel
from cloud_service.jobs.store import result_key
from evaluation.asterisk import Prompt
from evaluation.scoring import words
from proto.asr.v1 import asr_pb2
from testkit.servers import RedisServer, free_port
from testkit.wait import wait_for
from tests.integration.cloud_fixtures import (
    ServerThread,
    base_asr,  # noqa: F401 (fixture)
    cloud_config,
    cloud_redis,  # noqa: F401 (fixture)
    need_prompts,
    register_device,
)
from tests.integration.wyoming_fixtures import final, pcm, utterance, wyoming_process

pytestmark = [pytest.mark.slow, pytest.mark.redis]
DEVICE = "wyoming-sat"


@pytest.fixture(scope="module")
def cloud(base_asr: AsrModel, cloud_redis: RedisServer) -> Iterator[ServerThread]:  # noqa: F811
    with ServerThread(cloud_config(cloud_redis.url, rate_limit_per_min=0), base_asr) as srv:
        yield srv


@pytest.fixture(scope="module")
def token_file(cloud_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    path = tmp_path_factory.mktemp("wy-token") / "device.token"
    path.write_text(register_device(cloud_redis.url, DEVICE) + "\n")
    path.chmod(0o600)
    return path


def _start(edge_artifact: Path, log: Path, cloud: str, token: Path, deadline_s: float) -> Any:
    return wyoming_process(edge_artifact, log, "--device-id", DEVICE, "--cloud", cloud, "--token-file", str(token),
                           "--cloud-deadline-s", str(deadline_s))


def _send(port: int, prompt: Prompt) -> tuple[Any, list[str]]:
    """(the final transcript, the streamed chunks' texts) for one 16 kHz utterance."""
    events = asyncio.run(utterance(port, pcm(prompt.wav, 16000), 16000, timeout_s=300))
    return final(events), [TranscriptChunk.from_event(e).text for e in events if TranscriptChunk.is_type(e.type)]


def _stored_text(redis_url: str, segment_id: str) -> str:
    """The text the cloud computed for (DEVICE, segment_id), once it has stored it (just after answering)."""
    key = result_key(DEVICE, segment_id)
    with redis.Redis.from_url(redis_url) as r:
        assert wait_for(lambda: r.exists(key) == 1, 120, interval=0.2), f"the cloud stored no result for {key}"
        return str(asr_pb2.TranscribeResponse.FromString(r.get(key)).text).strip()


def _results(redis_url: str) -> set[str]:
    with redis.Redis.from_url(redis_url) as r:
        return {k.decode() for k in r.scan_iter(result_key(DEVICE, "*"))}


def _log_line(log: Path, pattern: str) -> str:
    """The first line of `log` matching `pattern`, waiting for it to be written."""
    found: list[str] = []

    def seen() -> bool:
        found[:] = [ln for ln in log.read_text(errors="replace").splitlines() if re.search(pattern, ln)]
        return bool(found)

    assert wait_for(seen, 120, interval=0.2), f"no log line /{pattern}/ in:\n{log.read_text()[-3000:]}"
    return found[0]


@pytest.fixture(scope="module")
def escalating(edge_artifact: Path, cloud: ServerThread, token_file: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A wyoming process whose deadline the cloud always meets (generous: the machine may be busy)."""
    log = tmp_path_factory.mktemp("wy-cloud") / "wyoming.log"
    with _start(edge_artifact, log, f"127.0.0.1:{cloud.port}", token_file, 300) as port:
        yield port, log


def test_doubtful_utterance_gets_the_clouds_text(escalating: tuple[int, Path], cloud_redis: RedisServer,  # noqa: F811
                                                  ) -> None:
    port, log = escalating
    prompt = need_prompts("es")[1]  # Spanish: the English-only edge model doubts it
    last, chunks = _send(port, prompt)
    assert last.context["source"] == "cloud", (last, log.read_text()[-3000:])
    seg = last.context["segment_id"]
    assert seg.startswith(f"{DEVICE}-")
    assert last.text == _stored_text(cloud_redis.url, seg)  # the cloud's answer for this very segment
    assert chunks == [last.text]
    # The multilingual cloud model hears Spanish where the edge could only write English.
    assert last.language == "es"
    ref = set(words(prompt.text, "es"))
    assert len(ref & set(words(last.text, "es"))) >= len(ref) / 2, (last.text, prompt.text)
    assert re.search(rf"escalation {seg}: cloud answered in", log.read_text())


def test_confident_english_is_not_escalated(escalating: tuple[int, Path], cloud_redis: RedisServer,  # noqa: F811
                                            ) -> None:
    port, log = escalating
    prompt = need_prompts("en")[0]
    before = _results(cloud_redis.url)
    last, chunks = _send(port, prompt)
    assert last.context == {"source": "edge"} and last.language == "en"
    assert words(last.text, "en") == words(prompt.text, "en"), (last.text, prompt.text)
    assert " ".join(chunks).split() == last.text.split()
    line = _log_line(log, r"wyoming transcript \(edge, ")
    assert prompt.text.split()[0].lower() in line.lower()
    assert _results(cloud_redis.url) == before  # the cloud was asked nothing


def test_too_short_a_deadline_returns_the_edge_text_and_logs_the_late_answer(
        edge_artifact: Path, cloud: ServerThread, token_file: Path, cloud_redis: RedisServer,  # noqa: F811
        tmp_path: Path) -> None:
    log = tmp_path / "wyoming.log"
    prompt = need_prompts("es")[2]
    with _start(edge_artifact, log, f"127.0.0.1:{cloud.port}", token_file, 0.001) as port:
        last, chunks = _send(port, prompt)
        assert last.context["source"] == "edge" and last.language == "en", last
        seg = last.context["segment_id"]  # it was escalated, and the edge's own segments were streamed
        assert chunks and " ".join(chunks).split() == last.text.split()
        late = _log_line(log, rf"late escalation {seg}: ")  # written when the answer comes, process still up
    cloud_text = _stored_text(cloud_redis.url, seg)
    assert "cloud answered after" in late and late.rstrip().endswith(cloud_text), late
    assert cloud_text != last.text
    assert re.search(rf"escalation {seg}: no cloud answer within 0.001 s", log.read_text())


def test_unreachable_cloud_returns_the_edge_text(edge_artifact: Path, token_file: Path, tmp_path: Path) -> None:
    log = tmp_path / "wyoming.log"
    prompt = need_prompts("es")[2]
    with _start(edge_artifact, log, f"127.0.0.1:{free_port()}", token_file, 300) as port:
        last, chunks = _send(port, prompt)
        english = need_prompts("en")[0]
        confident, _ = _send(port, english)  # and the server goes on serving
    assert last.context["source"] == "edge" and last.text and " ".join(chunks).split() == last.text.split()
    seg = last.context["segment_id"]
    assert re.search(rf"escalation {seg}: UNAVAILABLE", log.read_text()), log.read_text()[-3000:]
    assert "late escalation" not in log.read_text()
    assert words(confident.text, "en") == words(english.text, "en")
