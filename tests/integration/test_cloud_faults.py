"""Black-box faults: Redis killed under a serving replica; a stream worker SIGKILLed in the middle of a batch;
the CLI server stopped with SIGTERM."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import paho.mqtt.client as mqtt
import pytest
import redis

from cloud_service.api.messages import job_fields
from cloud_service.asr.model import AsrModel
from cloud_service.config import CloudConfig
from cloud_service.jobs.store import STATS_KEY, result_key
from cloud_service.jobs.store import register_device as store_register
from cloud_service.jobs.worker import MqttPublisher, StreamWorker
from proto.asr.v1 import asr_pb2
from shared.mqtt import MqttSettings
from testkit.servers import MosquittoServer, RedisServer, cloud_serve_cmd, free_port, wait_port
from tests.integration.cloud_fixtures import (
    ROOT,
    ServerThread,
    base_asr,  # noqa: F401 (fixture)
    bearer,
    cloud_config,
    need_prompts,
    pcm16_audio,
    register_device,
)

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.redis]


def _req(seg: str, wav: Path, device: str = "dev-f") -> asr_pb2.TranscribeRequest:
    return asr_pb2.TranscribeRequest(segment_id=seg, device_id=device, audio=pcm16_audio(wav), language="en")


def test_keeps_serving_without_redis_and_recovers(
    base_asr: AsrModel,  # noqa: F811
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wav = need_prompts("en")[0].wav
    token = register_device(redis_server.url, "dev-f")
    with ServerThread(cloud_config(redis_server.url), base_asr) as srv:
        stub = srv.stub()
        assert not stub.Transcribe(_req("dev-f-1", wav), metadata=bearer(token), timeout=120).cached
        redis_server.kill()
        caplog.set_level(logging.WARNING, logger="cloud_service.jobs.store")
        # No dedup while Redis is away, but answers all the same (the device's token is cached).
        down1 = stub.Transcribe(_req("dev-f-2", wav), metadata=bearer(token), timeout=120)
        down2 = stub.Transcribe(_req("dev-f-1", wav), metadata=bearer(token), timeout=120)
        assert down1.text and not down1.cached and not down2.cached
        outage_logs = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
        assert len(outage_logs) == 1, [r.getMessage() for r in caplog.records]
        redis_server.start()  # same port, empty (no persistence)
        # The registry went with it: register again (the old token's cache entry may have expired meanwhile
        # on a slow machine, which would make this an UNAUTHENTICATED test of timing, not of recovery).
        token = register_device(redis_server.url, "dev-f")
        time.sleep(srv.config.redis_retry_s + 0.1)
        back = stub.Transcribe(_req("dev-f-3", wav), metadata=bearer(token), timeout=120)
        assert not back.cached
        rds = redis.Redis.from_url(redis_server.url)
        deadline = time.monotonic() + 5  # results are stored again (just after each reply): dedup is back
        while not rds.exists(result_key("dev-f", "dev-f-3")):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert stub.Transcribe(_req("dev-f-3", wav), metadata=bearer(token), timeout=30).cached
        assert any("Redis is back" in r.getMessage() for r in caplog.records)
        assert srv.servicer.batcher.items_run == 4


def _pending(rds: redis.Redis, config: CloudConfig) -> int:
    try:
        return int(rds.xpending(config.stream, config.group)["pending"])
    except redis.ResponseError:  # the worker has not created the group yet
        return 0


def _subscribe(port: int, topic: str) -> tuple[mqtt.Client, list[dict[str, object]]]:
    got: list[dict[str, object]] = []
    ready = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-results")

    def on_connect(c: mqtt.Client, *_: object) -> None:
        c.subscribe(topic, qos=1)

    client.on_connect = on_connect
    client.on_subscribe = lambda *_: ready.set()
    client.on_message = lambda _c, _u, msg: got.append(json.loads(msg.payload))
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert ready.wait(10)
    return client, got


def test_worker_killed_mid_batch_is_reclaimed_and_finished_once(
    base_asr: AsrModel,  # noqa: F811
    redis_server: RedisServer,
    mosquitto_server: MosquittoServer,
    tmp_path: Path,
) -> None:
    prompts = need_prompts("en")[:3]
    config = CloudConfig(
        model=str(ROOT / "models" / "base.pt"),
        device="cpu",
        redis_url=redis_server.url,
        fleet="lab",
        consumer="w2",
        worker_batch=4,
        claim_min_idle_ms=500,
        mqtt_host="127.0.0.1",
        mqtt_port=mosquitto_server.port,
    )
    rds = redis.Redis.from_url(redis_server.url)
    subscriber, got = _subscribe(mosquitto_server.port, "fleet/lab/devices/+/results")
    for i, p in enumerate(prompts):
        dev = f"d{i}"
        rds.xadd(config.stream, job_fields(_req(f"{dev}-job-{i}", p.wav, device=dev), "lab", time.time(), device=dev))

    log = (tmp_path / "w1.log").open("wb")
    cmd = [
        sys.executable,
        "-m",
        "cloud_service",
        "worker",
        "--redis",
        redis_server.url,
        "--model",
        config.model,
        "--device",
        "cpu",
        "--consumer",
        "w1",
        "--batch",
        "4",
        "--fleet",
        "lab",
        "--mqtt-host",
        "127.0.0.1",
        "--mqtt-port",
        str(mosquitto_server.port),
    ]
    w1 = subprocess.Popen(
        cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    try:
        deadline = time.monotonic() + 180
        while _pending(rds, config) < 3:
            assert w1.poll() is None, (tmp_path / "w1.log").read_text()
            assert time.monotonic() < deadline, "worker w1 never took the jobs"
            time.sleep(0.02)
        time.sleep(0.3)  # w1 is decoding the batch of three now
        w1.send_signal(signal.SIGKILL)
        w1.wait(10)
    finally:
        if w1.poll() is None:
            w1.kill()
    pending = rds.xpending_range(config.stream, config.group, "-", "+", 10)
    assert {p["consumer"] for p in pending} == {b"w1"} and len(pending) == 3
    finished = [i for i in range(3) if rds.exists(result_key(f"d{i}", f"d{i}-job-{i}"))]
    assert not finished, "w1 finished before it was killed"

    publisher = MqttPublisher(MqttSettings(port=mosquitto_server.port, client_id="asr-w2"))
    worker = StreamWorker(config, base_asr, rds, publisher)
    worker.ensure_group()
    time.sleep(0.6)  # past claim_min_idle_ms
    handled = 0
    deadline = time.monotonic() + 180
    while handled < 3:
        handled += worker.step(block_ms=100)
        assert time.monotonic() < deadline
    assert worker.step(block_ms=100) == 0  # nothing left, nothing handled twice
    publisher.close()
    time.sleep(1.0)
    subscriber.loop_stop()
    subscriber.disconnect()

    assert rds.xpending(config.stream, config.group)["pending"] == 0
    assert int(rds.hget(STATS_KEY, "jobs_completed") or 0) == 3
    counts = Counter(str(m["segment_id"]) for m in got)
    assert counts == {"d0-job-0": 1, "d1-job-1": 1, "d2-job-2": 1}
    for i, p in enumerate(prompts):
        stored = asr_pb2.TranscribeResponse.FromString(rds.get(result_key(f"d{i}", f"d{i}-job-{i}")) or b"")
        assert stored.device_id == f"d{i}" and stored.text
        assert any(w in stored.text.lower() for w in p.text.lower().split()[:4])


def test_cli_serve_answers_health_and_stops_on_sigterm(tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = free_port()
    cmd = cloud_serve_cmd(port, ROOT / "models" / "base.pt", "--device", "cpu", "--no-auth", "--grace-s", "1")
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        wait_port(port, timeout=180)
        stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out.decode()
        assert b"shutting down" in out and b"Traceback" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_cli_refuses_bad_config_in_one_line(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "cloud_service", "serve", "--model", str(tmp_path / "nope.pt")]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert (
        proc.returncode == 2
        and proc.stderr.startswith("error: checkpoint")
        and "Traceback" not in proc.stderr
    )
    cmd = [sys.executable, "-m", "cloud_service", "serve", "--model", str(ROOT / "models" / "base.pt")]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert proc.returncode == 2 and "device auth needs the registry in Redis" in proc.stderr


def _fetch_code(stub: object, token: str) -> grpc.StatusCode:
    """The status of a FetchModel for an artifact that does not exist: NOT_FOUND once authenticated."""
    try:
        list(stub.FetchModel(asr_pb2.ModelRequest(name="no-such-artifact", file="manifest.json"),  # type: ignore[attr-defined]
                             metadata=bearer(token), timeout=30))
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_a_rotated_token_works_at_once_and_the_old_one_stops(base_asr: AsrModel,  # noqa: F811
                                                             redis_server: RedisServer) -> None:
    old = register_device(redis_server.url, "dev-r")
    with ServerThread(cloud_config(redis_server.url), base_asr) as srv:
        stub = srv.stub()
        assert _fetch_code(stub, old) == grpc.StatusCode.NOT_FOUND  # authenticated, and now cached
        with redis.Redis.from_url(redis_server.url) as client:
            new = store_register(client, "dev-r", rotate=True)
        # Within the cache's lifetime: the new token is checked against Redis, not refused on the stale hash.
        assert _fetch_code(stub, new) == grpc.StatusCode.NOT_FOUND
        assert _fetch_code(stub, old) == grpc.StatusCode.UNAUTHENTICATED
