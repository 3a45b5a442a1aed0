"""`cloud-service worker` as the process it is deployed as: a real Redis, a real Mosquitto, the tiny.en checkpoint.

It drops jobs it cannot use (and counts them), publishes each good one once, rides out a Redis restart that lost
the stream and its consumer group, touches its heartbeat file, and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from cloud_service.api.messages import job_fields
from cloud_service.config import DEFAULT_GROUP, DEFAULT_STREAM
from cloud_service.jobs.store import STATS_KEY, result_key
from proto.asr.v1 import asr_pb2
from testkit.servers import MosquittoServer, RedisServer
from testkit.wait import wait_until
from tests.audio_fixtures import data_prompts, pcm16_audio
from tests.integration.mqtt_fixtures import Listener

ROOT = Path(__file__).resolve().parents[2]
FLEET = "lab"
DEVICE = "dev-w"


def _seg(name: str) -> str:
    return f"{DEVICE}-{name}"  # a segment id starts with its device's id


def _job(name: str, audio: asr_pb2.Audio) -> dict[str, bytes | str]:
    req = asr_pb2.TranscribeRequest(segment_id=_seg(name), device_id=DEVICE, audio=audio, language="en")
    return job_fields(req, FLEET, time.time(), device=DEVICE)


def _log(path: Path) -> str:
    return path.read_text(errors="replace")


@pytest.mark.redis
@pytest.mark.mqtt
def test_worker_process_drops_bad_jobs_rides_out_an_empty_redis_and_stops_on_sigterm(
    redis_server: RedisServer, mosquitto_server: MosquittoServer, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    clips = data_prompts("en")
    rds = redis.Redis.from_url(redis_server.url)
    results = Listener(mosquitto_server.port, f"fleet/{FLEET}/devices/+/results")
    # Queued before any worker exists: the group starts from the stream's beginning, so none is skipped.
    rds.xadd(DEFAULT_STREAM, {"fleet": FLEET, "segment_id": "no-request"})
    empty = asr_pb2.Audio(encoding=asr_pb2.Audio.PCM16, sample_rate=16000, data=b"")
    rds.xadd(DEFAULT_STREAM, _job("empty-audio", empty))
    rds.xadd(DEFAULT_STREAM, _job("good-0", pcm16_audio(clips[0].wav)))

    heartbeat, log = tmp_path / "heartbeat", tmp_path / "worker.log"
    cmd = [
        sys.executable, "-m", "cloud_service", "worker", "--redis", redis_server.url,
        "--model", str(tiny_checkpoint), "--device", "cpu", "--threads", "1", "--consumer", "w-proc",
        "--fleet", FLEET, "--mqtt-host", "127.0.0.1", "--mqtt-port", str(mosquitto_server.port),
        "--heartbeat-file", str(heartbeat),
    ]  # fmt: skip
    with log.open("wb") as out:
        worker = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        def published(segment: str) -> bool:
            assert worker.poll() is None, _log(log)
            return any(m["segment_id"] == segment for m in _results(results))

        wait_until(lambda: published(_seg("good-0")), 180, "the first result on MQTT", interval=0.1)
        stored = asr_pb2.TranscribeResponse.FromString(rds.get(result_key(DEVICE, _seg("good-0"))) or b"")
        assert stored.device_id == DEVICE
        assert "cannot be completed" in stored.text.lower(), stored.text
        stats = rds.hgetall(STATS_KEY)
        assert (stats[b"jobs_completed"], stats[b"jobs_invalid"]) == (b"1", b"1")
        assert rds.xpending(DEFAULT_STREAM, DEFAULT_GROUP)["pending"] == 0  # the dropped ones are acknowledged
        text = _log(log)
        assert "dropping malformed job" in text and "dropping job" in text and "empty" in text
        beat = heartbeat.stat().st_mtime_ns
        wait_until(lambda: heartbeat.stat().st_mtime_ns > beat, 10, "a heartbeat", interval=0.1)

        # Redis restarts empty (no persistence): the stream and the consumer group are gone.
        redis_server.stop()
        wait_until(lambda: "Redis unavailable" in _log(log), 30, "the worker to notice Redis is down")
        redis_server.start()
        rds = redis.Redis.from_url(redis_server.url)
        rds.xadd(DEFAULT_STREAM, _job("good-1", pcm16_audio(clips[1].wav)))
        wait_until(lambda: published(_seg("good-1")), 60, "a result after the restart", interval=0.1)
        text = _log(log)
        assert "creating it again" in text and "Redis is back" in text
        assert rds.exists(result_key(DEVICE, _seg("good-1"))) and "Traceback" not in text

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, _log(log)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        results.close()
    assert "worker w-proc stopped" in _log(log)
    assert sorted(m["segment_id"] for m in _results(results)) == [_seg("good-0"), _seg("good-1")]  # once each


def _results(listener: Listener) -> list[dict[str, object]]:
    return [json.loads(p) for t, p, _ in list(listener.messages) if t.endswith("/results") and p]
