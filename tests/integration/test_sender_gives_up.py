"""The escalation sender against a real cloud (gRPC, device auth, Redis, base): a request the cloud will never accept
is dropped, counted and reported, and does not hold up the answerable one queued with it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from cloud_service.asr.model import AsrModel
from edge_node.adapters.cloud_client import CloudClientConfig, EscalationClient
from edge_node.daemon.events import EventWriter
from edge_node.daemon.outbox import Outbox, create_key, load_key
from edge_node.daemon.retry import BackoffPolicy, BreakerPolicy
from edge_node.daemon.sender import EscalationSender
from proto.asr.v1 import asr_pb2
from testkit.servers import RedisServer
from testkit.wait import wait_until
from tests.audio_fixtures import data_prompts, pcm16_audio
from tests.integration.cloud_fixtures import ServerThread, base_asr, cloud_config, register_device  # noqa: F401


def _events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
@pytest.mark.redis
def test_a_request_the_cloud_rejects_is_given_up_and_the_good_one_answered(
    base_asr: AsrModel,  # noqa: F811
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    token = register_device(redis_server.url, "edge-r")
    create_key(tmp_path / "outbox.key")
    outbox = Outbox(tmp_path / "outbox.db", load_key(tmp_path / "outbox.key"))
    good = asr_pb2.TranscribeRequest(segment_id="edge-r-good", device_id="edge-r", language="en",
                                     audio=pcm16_audio(data_prompts("en")[1].wav))  # fmt: skip
    odd = asr_pb2.Audio(encoding=asr_pb2.Audio.PCM16, sample_rate=16000, data=b"\x00\x01\x02")
    bad = asr_pb2.TranscribeRequest(segment_id="edge-r-bad", device_id="edge-r", language="en", audio=odd)
    assert outbox.put("edge-r-bad", bad.SerializeToString(), 0.0)  # queued first: it must not block the good one
    assert outbox.put("edge-r-good", good.SerializeToString(), 1.7)
    events_path = tmp_path / "events.jsonl"
    events = EventWriter(events_path)
    counters: Counter[str] = Counter()
    with ServerThread(cloud_config(redis_server.url), base_asr) as srv:
        client = EscalationClient(CloudClientConfig(f"127.0.0.1:{srv.port}", "edge-r", token, timeout_s=120))
        sender = EscalationSender(client, outbox, events, counters, in_flight=2, backoff=BackoffPolicy(),
                                  breaker=BreakerPolicy(), heartbeat=lambda: None, target="test-cloud")  # fmt: skip
        sender.start()
        try:
            wait_until(lambda: outbox.stats()["pending"] == 0, 120, "the outbox to drain", interval=0.05)
        finally:
            sender.stop()
            client.close()
            events.close()
    by_segment = {e["segment_id"]: e for e in _events(events_path)}
    assert by_segment["edge-r-good"]["type"] == "revision"
    assert "conference is full" in str(by_segment["edge-r-good"]["text"]).lower()
    assert by_segment["edge-r-bad"]["type"] == "escalation_failed"
    assert "INVALID_ARGUMENT" in str(by_segment["edge-r-bad"]["reason"]) and "odd number of bytes" in str(
        by_segment["edge-r-bad"]["reason"]
    )
    stats = outbox.stats()
    assert (stats["answered"], stats["rejected"], stats["pending"]) == (1, 1, 0)
    assert counters["revisions"] == 1
    assert outbox.due(now=1e12) == []  # nothing left to retry, ever
    outbox.close()
