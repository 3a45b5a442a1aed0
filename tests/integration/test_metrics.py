"""Prometheus metrics: a real cloud server and a real `edge-node run` process, scraped over HTTP and parsed."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis
import soundfile as sf
from prometheus_client.parser import text_string_to_metric_families

from cloud_service.api.messages import job_fields
from cloud_service.api.metrics import OTHER_DEVICE, DeviceLabels
from cloud_service.asr.model import AsrModel
from cloud_service.config import DEFAULT_STREAM
from cloud_service.jobs.store import result_key
from proto.asr.v1 import asr_pb2
from testkit.escalation import ROOT, daemon_cmd, daemon_env, read_events, speech_file, tally
from testkit.servers import RedisServer, free_port
from testkit.wait import wait_for, wait_until
from tests.integration.cloud_fixtures import (
    ServerThread,
    bearer,
    cloud_config,
    cloud_redis,  # noqa: F401 (fixture)
    need_prompts,
    pcm16_audio,
    register_device,
)

pytestmark = [pytest.mark.slow]
DEVICE = "metrics-dev"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def metrics_server(tiny_asr: AsrModel, cloud_redis: RedisServer) -> Iterator[ServerThread]:  # noqa: F811
    config = cloud_config(cloud_redis.url, metrics_listen=f"127.0.0.1:{free_port()}")
    with ServerThread(config, tiny_asr) as srv:
        yield srv


@pytest.mark.redis
def test_cloud_counts_calls_batches_latency_and_devices(metrics_server: ServerThread,
                                                       cloud_redis: RedisServer) -> None:  # noqa: F811
    prompt = need_prompts("en")[0]
    token = register_device(cloud_redis.url, DEVICE)
    port = metrics_server.servicer.exporter.port if metrics_server.servicer.exporter else 0
    before = scrape(port)
    assert value(before, "asr_grpc_requests_total", method="Transcribe", code="OK") == 0
    stub = metrics_server.stub()
    req = asr_pb2.TranscribeRequest(segment_id=f"{DEVICE}-seg-1", device_id=DEVICE, audio=pcm16_audio(prompt.wav),
                                    language="en")
    reply = stub.Transcribe(req, metadata=bearer(token), timeout=120)
    assert reply.text.strip()
    with pytest.raises(grpc.RpcError) as refused:  # no token: refused by the auth interceptor
        stub.Transcribe(req, timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    bad = asr_pb2.TranscribeRequest(segment_id="someone-else-seg", device_id=DEVICE, audio=pcm16_audio(prompt.wav))
    with pytest.raises(grpc.RpcError) as invalid:  # refused by the servicer's own checks
        stub.Transcribe(bad, metadata=bearer(token), timeout=30)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # grpc.aio sends an abort's status before the handler's frame unwinds, so the client can see a refusal a
    # moment before the interceptor counts it: wait for the three calls to be counted, then read the rest.
    def counted() -> Samples | None:
        s = scrape(port)
        total = sum(v for (n, _), v in s.items() if n == "asr_grpc_requests_total")
        return s if total >= 3 else None

    after = wait_until(counted, timeout=10, what="three Transcribe calls counted")
    assert value(after, "asr_grpc_requests_total", method="Transcribe", code="OK") == 1
    assert value(after, "asr_grpc_requests_total", method="Transcribe", code="UNAUTHENTICATED") == 1
    assert value(after, "asr_grpc_requests_total", method="Transcribe", code="INVALID_ARGUMENT") == 1
    assert value(after, "asr_batch_size_count") == 1 and value(after, "asr_batch_size_sum") == 1
    assert value(after, "asr_inference_seconds_count") == 1 and value(after, "asr_inference_seconds_sum") > 0
    assert value(after, "asr_request_seconds_count") == 1
    # The request's end-to-end time contains its batch's model time.
    assert value(after, "asr_request_seconds_sum") >= value(after, "asr_inference_seconds_sum")
    assert value(after, "asr_escalations_total", device=DEVICE) == 1  # admitted calls only
    assert value(after, "asr_queue_depth") == 0
    assert value(after, "asr_model_info", model=metrics_server.asr.name, version=metrics_server.asr.version) == 1


def test_redis_errors_are_counted(tiny_asr: AsrModel) -> None:
    # Nothing listens on this port: each Redis call fails (after the outage's first, the store waits retry_s).
    config = cloud_config(f"redis://127.0.0.1:{free_port()}/0", auth=False, rate_limit_per_min=10,
                          metrics_listen=f"127.0.0.1:{free_port()}")
    prompt = need_prompts("en")[0]
    with ServerThread(config, tiny_asr) as srv:
        req = asr_pb2.TranscribeRequest(segment_id="lab-seg-1", device_id="lab", audio=pcm16_audio(prompt.wav))
        assert srv.stub().Transcribe(req, timeout=120).text.strip()  # served without Redis
        assert srv.servicer.exporter is not None
        samples = scrape(srv.servicer.exporter.port)
    errors = {dict(k[1])["operation"]: v for k, v in samples.items() if k[0] == "asr_redis_errors_total"}
    assert errors.get("rate limit", 0) >= 1, errors  # the first Redis call of a Transcribe


def test_device_label_cardinality_is_bounded() -> None:
    labels = DeviceLabels(limit=2)
    assert [labels.label(d) for d in ("a", "b", "c", "a", "d", "b")] == ["a", "b", OTHER_DEVICE, "a",
                                                                          OTHER_DEVICE, "b"]


# ---------------------------------------------------------------------------------------------- the edge daemon

EDGE_DEVICE = "metrics-edge"


@pytest.fixture(scope="module")
def mixed_speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One clean English prompt (confident) and two Spanish ones (the English-only edge model doubts them)."""
    en, es = need_prompts("en"), need_prompts("es")
    folder = tmp_path_factory.mktemp("metrics-audio")
    return speech_file(folder / "mixed.wav", [en[0].wav, es[0].wav, es[1].wav])


def _edge(source: Path, tmp_path: Path, port: int, cloud: str, token: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = daemon_cmd(str(source), tmp_path / "state", tmp_path / "events.jsonl", EDGE_DEVICE, cloud, token,
                     ("--metrics-listen", f"127.0.0.1:{port}", *extra))
    log = (tmp_path / "edge.log").open("ab")
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log, env=daemon_env())


def _scrape_when(port: int, pred: Callable[[Samples], bool], timeout: float = 180) -> Samples:
    last: list[Samples] = [{}]

    def ready() -> bool:
        try:
            last[0] = scrape(port)
        except OSError:  # not listening yet
            return False
        return pred(last[0])

    assert wait_for(ready, timeout, interval=0.5), last[0]
    return last[0]


def _stop(edge: subprocess.Popen[bytes], tmp_path: Path) -> None:
    edge.send_signal(signal.SIGTERM)
    try:
        assert edge.wait(60) == 0, (tmp_path / "edge.log").read_text()[-3000:]
    finally:
        if edge.poll() is None:
            edge.kill()


@pytest.mark.redis
def test_edge_daemon_metrics_follow_its_events(mixed_speech: Path, metrics_server: ServerThread,
                                               cloud_redis: RedisServer, edge_artifact: Path,  # noqa: F811
                                               tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(register_device(cloud_redis.url, EDGE_DEVICE))
    inbox = tmp_path / "inbox"  # a directory source: the daemon keeps serving (and being scraped) after the file
    inbox.mkdir()
    shutil.copy(mixed_speech, inbox / "mixed.wav")
    port = free_port()
    edge = _edge(inbox, tmp_path, port, f"127.0.0.1:{metrics_server.port}", token)
    try:
        samples = _scrape_when(port, lambda s: value(s, "edge_segments_total") > 0
                               and value(s, "edge_outbox_depth") == 0
                               and value(s, "edge_revisions_total") == value(s, "edge_escalated_total"))
    finally:
        _stop(edge, tmp_path)
    escalated, final, revisions = tally(read_events(tmp_path / "events.jsonl"))
    assert escalated and final, "the Spanish prompts should escalate, the English one not"
    assert value(samples, "edge_segments_total") == len(escalated) + len(final)
    assert value(samples, "edge_escalated_total") == len(escalated) == len(revisions)
    assert value(samples, "edge_outbox_enqueued_total") == len(escalated)
    assert value(samples, "edge_outbox_answered_total") == len(escalated)
    assert value(samples, "edge_over_budget_total") == 0 and value(samples, "edge_outbox_dropped_full_total") == 0
    assert value(samples, "edge_rtf_count") == 1 and value(samples, "edge_rtf_sum") > 0
    duration = sf.info(str(mixed_speech)).duration
    assert value(samples, "edge_audio_seconds_total") == pytest.approx(duration, abs=0.01)
    manifest = json.loads((edge_artifact / "manifest.json").read_text())
    assert value(samples, "edge_model_info", device=EDGE_DEVICE, model=manifest["name"],
                 version=manifest["version"]) == 1
    assert value(samples, "edge_config_version") == 0  # no control plane: no live parameters
    cloud = scrape(metrics_server.servicer.exporter.port if metrics_server.servicer.exporter else 0)
    assert value(cloud, "asr_escalations_total", device=EDGE_DEVICE) == len(escalated)


def test_edge_budget_refusals_are_counted(mixed_speech: Path, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(f"{EDGE_DEVICE}.unused")  # nothing is sent: the budget refuses every escalation
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(mixed_speech, inbox / "mixed.wav")
    port = free_port()
    edge = _edge(inbox, tmp_path, port, f"127.0.0.1:{free_port()}", token, "--budget", "0")
    try:
        samples = _scrape_when(port, lambda s: value(s, "edge_rtf_count") == 1)
    finally:
        _stop(edge, tmp_path)
    events = read_events(tmp_path / "events.jsonl")
    refused = [e for e in events if e.get("budget_exceeded")]
    assert refused, "the Spanish prompts should have asked to escalate"
    assert value(samples, "edge_over_budget_total") == len(refused)
    assert value(samples, "edge_escalated_total") == 0 and value(samples, "edge_outbox_depth") == 0


def test_edge_refuses_a_taken_metrics_port(mixed_speech: Path, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        cmd = daemon_cmd(str(mixed_speech), tmp_path / "state", tmp_path / "events.jsonl", EDGE_DEVICE,
                         extra=("--metrics-listen", f"127.0.0.1:{port}"))
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=daemon_env())
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"--metrics-listen 127.0.0.1:{port}: cannot listen" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "events.jsonl").exists() or not read_events(tmp_path / "events.jsonl")


# ---------------------------------------------------------------------------------------------- the stream worker

@pytest.mark.redis
def test_worker_process_counts_jobs(redis_server: RedisServer, tiny_checkpoint: Path, tmp_path: Path) -> None:
    prompt = need_prompts("en")[0]
    rds = redis.Redis.from_url(redis_server.url)
    req = asr_pb2.TranscribeRequest(segment_id="dev-w-good", device_id="dev-w", audio=pcm16_audio(prompt.wav),
                                    language="en")
    rds.xadd(DEFAULT_STREAM, job_fields(req, "lab", time.time(), device="dev-w"))  # type: ignore[arg-type]
    port = free_port()
    cmd = [sys.executable, "-m", "cloud_service", "worker", "--redis", redis_server.url, "--model",
           str(tiny_checkpoint), "--device", "cpu", "--threads", "1", "--metrics-listen", f"127.0.0.1:{port}"]
    with (tmp_path / "worker.log").open("wb") as out:
        worker = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=daemon_env())
    try:
        samples = _scrape_when(port, lambda s: value(s, "asr_jobs_total", outcome="done") >= 1, timeout=120)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
    assert value(samples, "asr_jobs_total", outcome="done") == 1
    assert value(samples, "asr_jobs_total", outcome="dead_lettered") == 0
    assert value(samples, "asr_batch_size_count") == 1 and value(samples, "asr_inference_seconds_sum") > 0
    assert rds.exists(result_key("dev-w", "dev-w-good"))
