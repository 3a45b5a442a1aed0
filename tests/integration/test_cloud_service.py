"""The gRPC EscalationService end to end: real base weights, real Redis, a real server on port 0."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_service.asr.model import AsrModel
from cloud_service.jobs.store import result_key
from proto.asr.v1 import asr_pb2, asr_pb2_grpc
from shared.manifest import write_manifest
from testkit.servers import RedisServer
from testkit.wait import wait_for
from tests.integration.cloud_fixtures import (
    ServerThread,
    base_asr,  # noqa: F401 (fixture)
    bearer,
    cloud_config,
    cloud_redis,  # noqa: F401 (fixture)
    encoded_audio,
    need_prompts,
    pcm16_audio,
    register_device,
    silence_pcm16,
)

pytestmark = [pytest.mark.slow, pytest.mark.redis]
DEVICE = "dev-a"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    art = root / "demo-int8"
    art.mkdir()
    (art / "encoder.onnx").write_bytes(os.urandom(600 * 1024 + 123))
    (art / "tokenizer.tiktoken").write_text("abc 0\n")
    write_manifest(art, {"name": "demo-int8", "version": "7"}, Ed25519PrivateKey.generate())
    (root / "secret.txt").write_text("not an artifact file")
    return root


@pytest.fixture(scope="module")
def server(base_asr: AsrModel, cloud_redis: RedisServer, artifacts: Path) -> Iterator[ServerThread]:  # noqa: F811
    config = cloud_config(cloud_redis.url, models_root=artifacts, max_batch=8)
    with ServerThread(config, base_asr) as srv:
        yield srv


@pytest.fixture(scope="module")
def token(cloud_redis: RedisServer) -> str:  # noqa: F811
    return register_device(cloud_redis.url, DEVICE)


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> asr_pb2_grpc.EscalationServiceStub:
    return server.stub()


def _request(seg: str, audio: asr_pb2.Audio, language: str = "en") -> asr_pb2.TranscribeRequest:
    return asr_pb2.TranscribeRequest(segment_id=seg, device_id=DEVICE, audio=audio, language=language)


def _words(text: str) -> set[str]:
    return {w.strip(".,!?¿¡").lower() for w in text.split()}


def test_transcribes_and_a_retried_segment_is_computed_once(server: ServerThread, stub, token: str) -> None:
    prompt = need_prompts("en")[0]
    rds = redis.Redis.from_url(server.config.redis_url or "")
    before = server.servicer.batcher.items_run
    first = stub.Transcribe(
        _request("dev-a-seg-retry-1", pcm16_audio(prompt.wav)), metadata=bearer(token), timeout=120
    )
    assert len(_words(first.text) & _words(prompt.text)) >= 0.7 * len(_words(prompt.text)), first.text
    assert not first.cached and first.language == "en" and first.model_name == "base"
    assert first.segments and first.segments[0].start >= 0 and first.timing.inference_ms > 0
    # Stored just after the reply.
    assert wait_for(lambda: bool(rds.exists(result_key(DEVICE, "dev-a-seg-retry-1"))), 5.0, interval=0.02)
    # The retry (same segment_id) comes from Redis, however different its audio.
    again = stub.Transcribe(_request("dev-a-seg-retry-1", silence_pcm16(1.0)), metadata=bearer(token), timeout=60)
    assert again.cached and again.text == first.text
    assert server.servicer.batcher.items_run == before + 1

    # Concurrent duplicates of a new segment: one decode between them.
    req = _request("dev-a-seg-dup-2", pcm16_audio(prompt.wav))
    with ThreadPoolExecutor(3) as pool:
        replies = list(
            pool.map(lambda _: stub.Transcribe(req, metadata=bearer(token), timeout=120), range(3))
        )
    assert len({r.text for r in replies}) == 1
    assert sorted(r.cached for r in replies) == [False, True, True]
    assert server.servicer.batcher.items_run == before + 2
    assert wait_for(lambda: int(rds.hget("asr:stats", "computed") or 0) == 2, 5.0, interval=0.02)  # counters are async


def test_bad_or_missing_token_is_unauthenticated(
    server: ServerThread,
    stub,
    token: str,
    cloud_redis: RedisServer,  # noqa: F811
) -> None:
    req = _request("dev-a-seg-auth", silence_pcm16(0.5))
    other = register_device(cloud_redis.url, "dev-b")
    forged = token.rsplit(".", 1)[0] + ".AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    cases = {
        "none": [],
        "forged": bearer(forged),
        "garbage": bearer("nonsense"),
        "other device": bearer(other),
        "not bearer": [("authorization", f"Basic {token}")],
    }
    for name, md in cases.items():
        with pytest.raises(grpc.RpcError) as err:
            stub.Transcribe(req, metadata=md, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
    with pytest.raises(grpc.RpcError) as err:
        stub.Transcribe(req, metadata=bearer(other), timeout=10)
    assert "does not belong to device 'dev-a'" in str(err.value.details())
    rds = redis.Redis.from_url(cloud_redis.url)
    stored = rds.hget("asr:device:dev-b", "token_sha256")
    assert stored == hashlib.sha256(other.encode()).hexdigest().encode()
    assert other.encode() not in b"".join(v for v in rds.hgetall("asr:device:dev-b").values())
    assert not rds.exists(result_key(DEVICE, "dev-a-seg-auth"))


def test_health_and_reflection_need_no_token(server: ServerThread) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = server.channel()
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = reflect.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert "asr.v1.EscalationService" in names and "grpc.health.v1.Health" in names


def test_bad_audio_is_invalid_argument_without_inference(server: ServerThread, stub, token: str) -> None:
    prompt = need_prompts("en")[0]
    flac = encoded_audio(prompt.wav, "FLAC", "PCM_16", asr_pb2.Audio.FLAC)
    cases = {
        "audio is empty": asr_pb2.Audio(encoding=asr_pb2.Audio.PCM16, sample_rate=16000, data=b""),
        "corrupt FLAC": asr_pb2.Audio(encoding=asr_pb2.Audio.FLAC, sample_rate=8000, data=flac.data[:300]),
        "limit is 30 s": silence_pcm16(31.0),
        "declared PCM16 but the data is a FLAC file": asr_pb2.Audio(
            encoding=asr_pb2.Audio.PCM16, sample_rate=8000, data=flac.data
        ),
        "unspecified": asr_pb2.Audio(sample_rate=8000, data=b"\x00\x00" * 10),
    }
    before = server.servicer.batcher.items_run
    for i, (message, audio) in enumerate(cases.items()):
        for rpc in (stub.Transcribe, stub.Submit):
            with pytest.raises(grpc.RpcError) as err:
                rpc(_request(f"dev-a-seg-bad-{i}", audio), metadata=bearer(token), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, message
            assert message in str(err.value.details())
    with pytest.raises(grpc.RpcError) as err:
        stub.Transcribe(_request("dev-a-seg-lang", silence_pcm16(1), "klingon"), metadata=bearer(token), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown language" in str(
        err.value.details()
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.Transcribe(_request("", silence_pcm16(1)), metadata=bearer(token), timeout=10)
    assert "segment_id is required" in str(err.value.details())
    assert server.servicer.batcher.items_run == before


def test_detect_finds_spanish_and_french_in_one_batch(server: ServerThread, stub, token: str) -> None:
    clips = need_prompts("es")[:2] + need_prompts("fr")[:2]
    reqs = [_request(f"dev-a-seg-detect-{i}", pcm16_audio(p.wav), "detect") for i, p in enumerate(clips)]
    # FLAC and Opus on the wire for half of them.
    reqs[1].audio.CopyFrom(encoded_audio(clips[1].wav, "FLAC", "PCM_16", asr_pb2.Audio.FLAC))
    reqs[3].audio.CopyFrom(encoded_audio(clips[3].wav, "OGG", "OPUS", asr_pb2.Audio.OPUS))
    with ThreadPoolExecutor(len(reqs)) as pool:
        replies = list(pool.map(lambda r: stub.Transcribe(r, metadata=bearer(token), timeout=180), reqs))
    assert [r.language for r in replies] == ["es", "es", "fr", "fr"]
    assert max(r.timing.batch_size for r in replies) >= 2  # they were decoded together
    for prompt, reply in zip(clips, replies, strict=True):
        assert len(_words(reply.text) & _words(prompt.text)) >= 3, (prompt.text, reply.text)


def test_fetch_model_chunks_resume_and_not_found(
    server: ServerThread, stub, token: str, artifacts: Path
) -> None:
    path = artifacts / "demo-int8" / "encoder.onnx"
    data = path.read_bytes()
    chunks = list(
        stub.FetchModel(
            asr_pb2.ModelRequest(name="demo-int8", file="encoder.onnx"), metadata=bearer(token), timeout=30
        )
    )
    assert len(chunks) == 3 and all(len(c.data) <= 256 * 1024 for c in chunks)
    assert b"".join(c.data for c in chunks) == data
    assert chunks[0].sha256 == hashlib.sha256(data).hexdigest() and chunks[0].total_size == len(data)
    resumed = list(
        stub.FetchModel(
            asr_pb2.ModelRequest(name="demo-int8", file="encoder.onnx", offset=300_000),
            metadata=bearer(token),
            timeout=30,
        )
    )
    assert resumed[0].offset == 300_000 and b"".join(c.data for c in resumed) == data[300_000:]
    manifest = b"".join(
        c.data
        for c in stub.FetchModel(
            asr_pb2.ModelRequest(name="demo-int8", file="manifest.json"), metadata=bearer(token), timeout=30
        )
    )
    assert manifest == (artifacts / "demo-int8" / "manifest.json").read_bytes()
    bad = [
        ("demo-int8", "nope.onnx", ""),
        ("nope", "encoder.onnx", ""),
        ("demo-int8", "../secret.txt", ""),
        ("..", "secret.txt", ""),
        ("demo-int8", "encoder.onnx", "8"),
    ]
    for name, file, version in bad:
        with pytest.raises(grpc.RpcError) as err:
            list(
                stub.FetchModel(
                    asr_pb2.ModelRequest(name=name, file=file, version=version),
                    metadata=bearer(token),
                    timeout=30,
                )
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, (name, file)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.FetchModel(asr_pb2.ModelRequest(name="demo-int8", file="encoder.onnx"), timeout=30))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_submit_enqueues_a_job(server: ServerThread, stub, token: str) -> None:
    prompt = need_prompts("en")[1]
    reply = stub.Submit(_request("dev-a-seg-submit-1", pcm16_audio(prompt.wav)), metadata=bearer(token), timeout=30)
    rds = redis.Redis.from_url(server.config.redis_url or "")
    entries = rds.xrange(server.config.stream, reply.stream_id, reply.stream_id)
    assert entries and entries[0][1][b"segment_id"] == b"dev-a-seg-submit-1"
    assert entries[0][1][b"device"] == DEVICE.encode()  # the authenticated device, recorded at admission
    assert asr_pb2.TranscribeRequest.FromString(entries[0][1][b"request"]).device_id == DEVICE


def test_expired_deadline_is_dropped_and_full_queue_refused(
    base_asr: AsrModel,  # noqa: F811
    cloud_redis: RedisServer,  # noqa: F811
) -> None:
    prompt = need_prompts("en")[0]
    config = cloud_config(cloud_redis.url, auth=False, max_batch=1, queue_size=1, max_wait_ms=0.0)
    with ServerThread(config, base_asr) as srv:
        stub = srv.stub()
        slow = threading.Thread(
            target=lambda: stub.Transcribe(_request("dev-a-seg-busy", pcm16_audio(prompt.wav)), timeout=180)
        )
        slow.start()
        deadline = time.monotonic() + 10
        while srv.servicer.batcher.depth or not srv.servicer._inflight:  # wait until seg-busy is decoding
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.05)
        late = stub.Transcribe.future(_request("dev-a-seg-late", pcm16_audio(prompt.wav)), timeout=0.4)
        time.sleep(0.1)
        with pytest.raises(grpc.RpcError) as full:  # the one queue slot is taken by seg-late
            stub.Transcribe(_request("dev-a-seg-over", silence_pcm16(1)), timeout=10)
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as err:
            late.result()
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        slow.join(180)
        time.sleep(0.2)
        assert srv.servicer.batcher.items_run == 1  # seg-late was dropped, never decoded
        rds = redis.Redis.from_url(cloud_redis.url)
        assert wait_for(lambda: bool(rds.exists(result_key(DEVICE, "dev-a-seg-busy"))), 5.0, interval=0.02)
        assert not rds.exists(result_key(DEVICE, "dev-a-seg-late"))
        assert wait_for(lambda: int(rds.hget("asr:stats", "deadline_dropped") or 0) == 1, 5.0, interval=0.02)


def test_rate_limit_is_per_device(cloud_redis: RedisServer) -> None:  # noqa: F811
    import asyncio

    from cloud_service.jobs.store import Store

    async def go() -> tuple[list[bool], bool]:
        store = Store(cloud_redis.url, 60)
        try:
            first = [await store.allow("rl-dev", 3) for _ in range(5)]
            return first, await store.allow("rl-other", 3)
        finally:
            await store.aclose()

    assert asyncio.run(go()) == ([True, True, True, False, False], True)
