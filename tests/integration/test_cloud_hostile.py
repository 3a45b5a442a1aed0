"""Hostile input against the real cloud (issue 13, findings 3, 4, 9c, 9d): decompression bombs, prompts and clips
that break a decode, poison-pill Submit jobs, revoked tokens during a Redis outage, non-finite numbers.

Real gRPC server (in this process, so its RSS is ours to measure), real Redis, real base weights; the only fakes are
a clock (token-cache age) and, where a failure no admission check can foresee is needed, a model wrapper that
raises for one marked request and hands every other one to the real model.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import pytest
import redis
import soundfile as sf

from cloud_service.api.messages import job_fields
from cloud_service.api.server import create_server
from cloud_service.asr.model import AsrModel, AsrRequest, AsrResult
from cloud_service.jobs.store import STATS_KEY, result_key
from cloud_service.jobs.worker import MqttPublisher, StreamWorker
from proto.asr.v1 import asr_pb2, asr_pb2_grpc
from shared.mqtt import MqttSettings
from testkit.memory import PeakRss
from testkit.servers import MosquittoServer, RedisServer
from tests.integration.cloud_fixtures import (
    ServerThread,
    base_asr,  # noqa: F401 (fixture)
    bearer,
    cloud_config,
    cloud_redis,  # noqa: F401 (fixture)
    need_prompts,
    pcm16_audio,
    register_device,
)
from tests.integration.mqtt_fixtures import Listener

pytestmark = [pytest.mark.slow, pytest.mark.redis]
DEVICE = "dev-h"
POISON = "poison: this request breaks the model"  # a valid prompt; PoisonedModel fails any batch holding it


def _flac(seconds: float, channels: int, rate: int) -> bytes:
    """Silence compresses to almost nothing: 300 s of 8-channel 48 kHz FLAC is ~117 KB, ~460 MB decoded."""
    buf = io.BytesIO()
    sf.write(buf, np.zeros((int(seconds * rate), channels), dtype=np.float32), rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _ogg_opus(seconds: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * 48_000), dtype=np.float32), 48_000, format="OGG", subtype="OPUS")
    return buf.getvalue()


class PoisonedModel:
    """The real model, except that a batch holding a request with prompt POISON raises, as a decode can fail in
    ways no admission check foresees (a CUDA fault, a whisper bug). Everything else is the real model's."""

    def __init__(self, real: AsrModel) -> None:
        self.real = real
        self.poisoned_batches = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def transcribe_batch(self, items: list[AsrRequest]) -> list[AsrResult]:
        if any(it.prompt == POISON for it in items):
            self.poisoned_batches += 1
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.real.transcribe_batch(items)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ClockedServerThread(ServerThread):
    """ServerThread whose authenticator reads `clock` (the token cache's age), not the real monotonic clock."""

    def __init__(self, config: Any, asr: AsrModel, clock: FakeClock) -> None:
        super().__init__(config, asr)
        self.clock = clock

    async def _start(self) -> int:
        self.server, port = create_server(self.config, "127.0.0.1:0", asr=self.asr, clock=self.clock)
        await self.server.start()
        return port


@pytest.fixture(scope="module")
def token(cloud_redis: RedisServer) -> str:  # noqa: F811
    return register_device(cloud_redis.url, DEVICE)


@pytest.fixture(scope="module")
def server(base_asr: AsrModel, cloud_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
           ) -> Iterator[ServerThread]:
    config = cloud_config(cloud_redis.url, models_root=tmp_path_factory.mktemp("no-artifacts"), rate_limit_per_min=0)
    with ServerThread(config, base_asr) as srv:
        yield srv


def _req(seg: str, audio: asr_pb2.Audio, device: str = DEVICE, language: str = "en", **kw: Any
         ) -> asr_pb2.TranscribeRequest:
    return asr_pb2.TranscribeRequest(segment_id=f"{device}-{seg}", device_id=device, audio=audio, language=language,
                                     **kw)


def _refusal(stub: asr_pb2_grpc.EscalationServiceStub, req: asr_pb2.TranscribeRequest, token: str,
             method: str = "Transcribe") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, method)(req, metadata=bearer(token), timeout=120)
    return cast(grpc.RpcError, err.value)


# ------------------------------------------------------------------------------------- finding 3: decompression bombs

def test_a_flac_bomb_is_refused_from_its_header_without_decoding_it(server: ServerThread, token: str) -> None:
    bomb, long_stereo = _flac(300, 8, 48_000), _flac(300, 2, 48_000)
    assert len(bomb) < 200_000  # ~117 KB on the wire, ~460 MB as float32
    flac = asr_pb2.Audio.FLAC
    stub = server.stub()
    before = server.servicer.batcher.items_run
    with PeakRss() as rss, ThreadPoolExecutor(3) as pool:
        # Three at once: decodes ran outside the bounded queue, so each one used to hold its ~460 MB together.
        errors = list(pool.map(lambda i: _refusal(stub, _req(f"bomb-{i}", asr_pb2.Audio(encoding=flac, data=bomb)),
                                                  token), range(3)))
        long_err = _refusal(stub, _req("long", asr_pb2.Audio(encoding=flac, data=long_stereo)), token)
    print(f"peak RSS growth refusing three 8-channel bombs and a 300 s stereo FLAC: {rss.growth_mb:.1f} MB")
    for err in errors:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert "8 channels" in (err.details() or ""), err.details()
    assert long_err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "300.0 s long" in (long_err.details() or ""), long_err.details()
    assert rss.growth_mb < 100, f"the server's RSS grew by {rss.growth_mb:.0f} MB while refusing the bombs"
    assert server.servicer.batcher.items_run == before


def test_a_long_ogg_opus_is_refused_without_decoding_600_s(server: ServerThread, token: str) -> None:
    ogg = _ogg_opus(600)
    assert len(ogg) < 300_000
    with PeakRss() as rss:
        err = _refusal(server.stub(), _req("long-opus", asr_pb2.Audio(encoding=asr_pb2.Audio.OPUS, data=ogg)), token)
    print(f"peak RSS growth refusing 600 s of Ogg/Opus: {rss.growth_mb:.1f} MB")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "600.0 s long" in (err.details() or ""), err.details()
    assert rss.growth_mb < 60, f"the server's RSS grew by {rss.growth_mb:.0f} MB while refusing 600 s of Opus"


def test_decodes_hold_an_admission_slot_and_a_full_house_is_resource_exhausted(
    base_asr: AsrModel, cloud_redis: RedisServer, token: str  # noqa: F811
) -> None:
    config = cloud_config(cloud_redis.url, max_decodes=1, rate_limit_per_min=0)
    bomb = asr_pb2.Audio(encoding=asr_pb2.Audio.FLAC, data=_flac(300, 8, 48_000))
    with ServerThread(config, base_asr) as srv:
        stub = srv.stub()
        slots = srv.servicer.decode_slots
        srv.run(slots.acquire())  # another request is decoding right now
        try:
            for method in ("Transcribe", "Submit"):
                err = _refusal(stub, _req(f"busy-{method}", bomb), token, method)
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (method, err.details())
                assert "audio decodes" in (err.details() or "")
        finally:
            srv.loop.call_soon_threadsafe(slots.release)
        err = _refusal(stub, _req("free", bomb), token)  # the slot is free again: decoded (and refused) at once
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert stub.Submit(_req("ok", pcm16_audio(need_prompts("en")[0].wav)), metadata=bearer(token), timeout=60)


# ------------------------------------------------------------------ finding 4: one device's request fails nobody else

def test_a_prompt_whisper_cannot_encode_is_refused_at_admission(server: ServerThread, token: str) -> None:
    audio = pcm16_audio(need_prompts("en")[0].wav)
    before = server.servicer.batcher.items_run
    for method in ("Transcribe", "Submit"):
        err = _refusal(server.stub(), _req(f"eot-{method}", audio, prompt="hello <|endoftext|> world"), token, method)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, err.code(), err.details())
        assert "special-token" in (err.details() or "")
    # A language the model's tokenizer lacks ("yue" came with large-v3) broke the batch the same way.
    err = _refusal(server.stub(), _req("yue", audio, language="yue"), token)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "yue" in (err.details() or ""), err.details()
    assert server.servicer.batcher.items_run == before


def test_a_bad_item_in_a_batch_fails_alone_and_the_other_device_gets_its_answer(
    base_asr: AsrModel, cloud_redis: RedisServer, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    good = need_prompts("en")[0]
    other = "dev-other"
    other_token = register_device(cloud_redis.url, other)
    # A long window so that the two requests surely share one batch.
    config = cloud_config(cloud_redis.url, max_batch=2, max_wait_ms=3000, rate_limit_per_min=0)
    with ServerThread(config, base_asr) as srv:
        samples = pcm16_audio(good.wav)
        bad = AsrRequest(np.zeros(16_000, dtype=np.float32), "en", "<|endoftext|>")  # as if validation missed it
        bad_future = asyncio.run_coroutine_threadsafe(srv.servicer.batcher.submit(bad, None), srv.loop)
        time.sleep(0.2)  # queued first: the batch window is open
        resp = srv.stub().Transcribe(_req("good", samples, device=other), metadata=bearer(other_token), timeout=120)
        with pytest.raises(ValueError, match="disallowed special token"):
            bad_future.result(60)
    words = {w.strip(".,!?").lower() for w in resp.text.split()}
    assert words & {w.lower() for w in good.text.split()[:4]}, resp.text
    assert resp.device_id == other
    # They were batched together; the batch failed, and the good request was decoded again on its own.
    assert any("batch of 2 failed" in r.getMessage() for r in caplog.records), caplog.text


def test_an_internal_decode_failure_is_a_retryable_internal_status(
    base_asr: AsrModel, cloud_redis: RedisServer, token: str  # noqa: F811
) -> None:
    model = PoisonedModel(base_asr)
    config = cloud_config(cloud_redis.url, rate_limit_per_min=0)
    with ServerThread(config, cast(AsrModel, model)) as srv:
        audio = pcm16_audio(need_prompts("en")[0].wav)
        err = _refusal(srv.stub(), _req("poison", audio, prompt=POISON), token)
    # INTERNAL is in the edge's RETRYABLE set (edge_node/adapters/cloud_client.py); UNKNOWN made it drop the segment.
    assert err.code() == grpc.StatusCode.INTERNAL, (err.code(), err.details())
    assert "decoding failed on the server" in (err.details() or "") and model.poisoned_batches == 1


def _published(listener: Listener) -> list[dict[str, Any]]:
    return [json.loads(p) for t, p, _ in list(listener.messages) if t.endswith("/results") and p]


def test_a_submit_job_that_always_fails_is_dead_lettered_and_the_worker_keeps_serving(
    base_asr: AsrModel, redis_server: RedisServer, mosquitto_server: MosquittoServer  # noqa: F811
) -> None:
    clips = need_prompts("en")
    config = cloud_config(redis_server.url, fleet="lab", consumer="w-dl", worker_batch=4, claim_min_idle_ms=200,
                          mqtt_host="127.0.0.1", mqtt_port=mosquitto_server.port)
    rds = redis.Redis.from_url(redis_server.url)
    listener = Listener(mosquitto_server.port, "fleet/lab/devices/+/results")
    time.sleep(0.5)  # subscribed before the first result is published

    def submit(seg: str, clip: Path, prompt: str = "") -> str:
        req = _req(seg, pcm16_audio(clip), prompt=prompt)
        fields = cast(dict[Any, Any], job_fields(req, "lab", time.time(), device=DEVICE))
        return cast(bytes, rds.xadd(config.stream, fields)).decode()

    poison_id = submit("poison", clips[0].wav, POISON)
    submit("good-1", clips[1].wav)
    publisher = MqttPublisher(MqttSettings(port=mosquitto_server.port, client_id="asr-w-dl"))
    model = PoisonedModel(base_asr)
    worker = StreamWorker(config, cast(AsrModel, model), rds, publisher)
    worker.ensure_group()
    dead = f"{config.stream}:dead"
    try:
        deadline = time.monotonic() + 120
        while not rds.exists(dead) or not rds.xlen(dead):
            assert time.monotonic() < deadline, "the poison job was never dead-lettered"
            worker.step(block_ms=100)
            time.sleep(0.25)  # past claim_min_idle_ms: the failed job is delivered again
        assert rds.exists(result_key(DEVICE, f"{DEVICE}-good-1")), "the job batched with the poison one was lost"
        submit("good-2", clips[2].wav)
        while not rds.exists(result_key(DEVICE, f"{DEVICE}-good-2")):
            assert time.monotonic() < deadline, "the worker stopped serving after the poison job"
            worker.step(block_ms=100)
        time.sleep(0.5)  # the last publish reaches the listener
    finally:
        publisher.close()
        listener.close()
    [(_, fields)] = cast(list[tuple[bytes, dict[bytes, bytes]]], rds.xrange(dead))
    assert fields[b"entry_id"].decode() == poison_id and fields[b"attempts"] == b"3"
    assert b"illegal memory access" in fields[b"error"] and fields[b"segment_id"] == f"{DEVICE}-poison".encode()
    failed = json.loads(rds.get(f"asr:failed:{DEVICE}:{DEVICE}-poison") or b"{}")
    assert failed["failed"] is True and failed["attempts"] == 3 and "illegal memory access" in failed["error"]
    assert rds.xpending(config.stream, config.group)["pending"] == 0  # acknowledged, not redelivered forever
    assert model.poisoned_batches == 4  # the first mixed batch, then the poison job alone on each of 3 deliveries
    assert int(rds.hget(STATS_KEY, "jobs_dead_lettered") or 0) == 1
    msgs = {m["segment_id"]: m for m in _published(listener)}
    assert set(msgs) == {f"{DEVICE}-poison", f"{DEVICE}-good-1", f"{DEVICE}-good-2"}
    assert msgs[f"{DEVICE}-poison"]["failed"] is True and msgs[f"{DEVICE}-good-1"]["text"]


# ------------------------------------------------------------ finding 9c: a revoked token during a Redis outage

def _fetch_code(stub: asr_pb2_grpc.EscalationServiceStub, token: str) -> grpc.StatusCode:
    """NOT_FOUND once authenticated (no such artifact); the auth failure's code otherwise. Needs no inference."""
    try:
        list(stub.FetchModel(asr_pb2.ModelRequest(name="none", file="manifest.json"), metadata=bearer(token),
                             timeout=30))
    except grpc.RpcError as exc:
        return cast(grpc.StatusCode, exc.code())
    return grpc.StatusCode.OK


def test_a_cached_token_is_trusted_only_for_its_max_age_while_redis_is_down(
    base_asr: AsrModel, redis_server: RedisServer, tmp_path: Path  # noqa: F811
) -> None:
    token = register_device(redis_server.url, "dev-v")
    clock = FakeClock()
    # The defaults: a hash is re-checked after 30 s, and trusted without Redis for at most 60 s.
    config = cloud_config(redis_server.url, models_root=tmp_path)
    with ClockedServerThread(config, base_asr, clock) as srv:
        stub = srv.stub()
        assert _fetch_code(stub, token) == grpc.StatusCode.NOT_FOUND  # verified against Redis, cached at t=0
        # The operator revokes the token, and Redis goes down before the cache is refreshed.
        with redis.Redis.from_url(redis_server.url) as client:
            client.delete("asr:device:dev-v")
        redis_server.kill()
        clock.now += 45  # past the cache's 30 s: Redis is asked, cannot answer, the 45 s old hash still counts
        assert _fetch_code(stub, token) == grpc.StatusCode.NOT_FOUND
        clock.now += 20  # 65 s since Redis last vouched for the token: no longer trusted
        assert _fetch_code(stub, token) == grpc.StatusCode.UNAVAILABLE
        redis_server.start()  # back, without the revoked device
        time.sleep(srv.config.redis_retry_s + 0.1)
        assert _fetch_code(stub, token) == grpc.StatusCode.UNAUTHENTICATED


# ----------------------------------------------------------------------------- finding 9d: non-finite numbers

@pytest.mark.parametrize(
    ("case", "fields", "message"),
    [
        ("nan-start", {"segment_start": float("nan")}, "segment_start"),
        ("inf-start", {"segment_start": float("inf")}, "segment_start"),
        ("negative-start", {"segment_start": -1.0}, "segment_start"),
        ("nan-confidence", {"edge": asr_pb2.EdgeHypothesis(text="hi", confidence=float("nan"))}, "edge.confidence"),
        ("inf-logprob", {"edge": asr_pb2.EdgeHypothesis(avg_logprob=float("-inf"))}, "edge.avg_logprob"),
    ],
)
def test_non_finite_or_negative_numbers_are_refused_at_admission(
    server: ServerThread, token: str, case: str, fields: dict[str, Any], message: str
) -> None:
    before = server.servicer.batcher.items_run
    req = _req(f"num-{case}", pcm16_audio(need_prompts("en")[0].wav), **fields)
    err = _refusal(server.stub(), req, token)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert message in (err.details() or ""), err.details()
    assert server.servicer.batcher.items_run == before
