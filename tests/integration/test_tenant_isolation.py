"""Tenant isolation (issue 13, finding 1): results, the in-flight map and Submit jobs are keyed by the
authenticated device, a segment id must start with that device's id, and every string field is bounded before
Redis is touched. A real grpc.aio server with device auth, a real Redis, the tiny.en checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import redis

from cloud_service.asr.model import AsrModel
from cloud_service.jobs.worker import StreamWorker
from proto.asr.v1 import asr_pb2, asr_pb2_grpc
from testkit.servers import RedisServer
from testkit.wait import wait_for
from tests.audio_fixtures import data_prompts, pcm16_audio, silence_pcm16
from tests.integration.cloud_fixtures import (
    ServerThread,
    bearer,
    cloud_config,
    register_device,
)

pytestmark = [pytest.mark.slow, pytest.mark.redis]

A, B = "ten-a", "ten-b"
C, CX = "ten-c", "ten-c-x"  # one id is a prefix of the other: "ten-c-x-1" is a valid segment id for both
DEVICES = (A, B, C, CX)
Stub = asr_pb2_grpc.EscalationServiceStub
LONGEST_KEY = 256  # well above "asr:published:" + 64-char device + ":" + 128-char segment id


@pytest.fixture(scope="module")
def rds_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("tenant-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tokens(rds_server: RedisServer) -> dict[str, str]:
    return {d: register_device(rds_server.url, d) for d in DEVICES}


@pytest.fixture(scope="module")
def server(tiny_asr: AsrModel, rds_server: RedisServer) -> Iterator[ServerThread]:
    with ServerThread(cloud_config(rds_server.url), tiny_asr) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> asr_pb2_grpc.EscalationServiceStub:
    return server.stub()


@pytest.fixture()
def rds(rds_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(rds_server.url)
    yield client
    client.close()


def _req(
    device: str, seg: str, audio: asr_pb2.Audio, language: str = "en", prompt: str = ""
) -> asr_pb2.TranscribeRequest:
    return asr_pb2.TranscribeRequest(segment_id=seg, device_id=device, audio=audio, language=language, prompt=prompt)


def _stored(rds: redis.Redis, seg: str) -> list[bytes]:
    """The result keys of `seg`, whatever their layout."""
    return [k for k in rds.scan_iter("asr:result:*") if k.endswith(seg.encode())]


def _drain(worker: StreamWorker, timeout: float = 180.0) -> None:
    """Run the worker until it has handled something and the stream has nothing more for it."""
    worker.ensure_group()
    deadline, handled = time.monotonic() + timeout, 0
    while True:
        n = worker.step(block_ms=100)
        handled += n
        if handled and not n:
            return
        assert time.monotonic() < deadline, "the worker took no job"


def _refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def test_another_device_cannot_read_a_result_by_its_segment_id(
    server: ServerThread, stub: Stub, tokens: dict[str, str], rds: redis.Redis
) -> None:
    prompt = data_prompts("en")[0]
    before = server.servicer.batcher.items_run
    first = stub.Transcribe(_req(A, "ten-a-seg-1", pcm16_audio(prompt.wav)), metadata=bearer(tokens[A]), timeout=180)
    assert first.text.strip() and not first.cached and first.device_id == A
    assert wait_for(lambda: bool(_stored(rds, "ten-a-seg-1")), 10.0, interval=0.02)  # stored just after the reply

    # B, with its own valid token, asks under A's segment id: refused, and A's text is nowhere in the reply.
    err = _refused(lambda: stub.Transcribe(_req(B, "ten-a-seg-1", silence_pcm16(0.5)),
                                           metadata=bearer(tokens[B]), timeout=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must start with 'ten-b-'" in str(err.details()) and first.text not in str(err.details())
    # Same through Submit, and nothing is queued for it.
    err = _refused(lambda: stub.Submit(_req(B, "ten-a-seg-1", silence_pcm16(0.5)),
                                       metadata=bearer(tokens[B]), timeout=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    # B claiming to be A in the body is still refused by the token check.
    err = _refused(lambda: stub.Transcribe(_req(A, "ten-a-seg-1", silence_pcm16(0.5)),
                                           metadata=bearer(tokens[B]), timeout=30))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED

    # A's own retry (different audio, same id) still gets the stored answer: dedup works per device.
    again = stub.Transcribe(_req(A, "ten-a-seg-1", silence_pcm16(0.5)), metadata=bearer(tokens[A]), timeout=30)
    assert again.cached and again.text == first.text and again.device_id == A
    assert server.servicer.batcher.items_run == before + 1
    assert _stored(rds, "ten-a-seg-1") == [b"asr:result:ten-a:ten-a-seg-1"]  # namespaced by the device


def test_a_device_cannot_plant_a_result_another_later_receives(
    server: ServerThread, stub: Stub, tokens: dict[str, str], rds: redis.Redis
) -> None:
    prompt = data_prompts("en")[1]
    err = _refused(lambda: stub.Transcribe(_req(B, "ten-a-seg-2", pcm16_audio(prompt.wav)),
                                           metadata=bearer(tokens[B]), timeout=180))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not _stored(rds, "ten-a-seg-2")
    # A's own (silent) segment under that id is decoded for A, not answered with B's planted speech.
    mine = stub.Transcribe(_req(A, "ten-a-seg-2", silence_pcm16(0.5)), metadata=bearer(tokens[A]), timeout=180)
    assert not mine.cached and mine.device_id == A
    planted = {w.strip(".,!?").lower() for w in prompt.text.split() if len(w) > 3}
    assert not planted & {w.strip(".,!?").lower() for w in mine.text.split()}, mine.text


def test_oversized_fields_are_refused_before_anything_is_stored(
    server: ServerThread, stub: Stub, tokens: dict[str, str], rds: redis.Redis
) -> None:
    md = bearer(tokens[A])
    before_run, before_queue = server.servicer.batcher.items_run, rds.xlen(server.config.stream)
    huge = "ten-a-" + "x" * (4 * 1024 * 1024)
    cases = [
        ("segment_id", _req(A, huge, silence_pcm16(0.5))),
        ("segment_id", _req(A, "ten-a-" + "x" * 123, silence_pcm16(0.5))),  # 129 characters: just over
        ("language", _req(A, "ten-a-lang", silence_pcm16(0.5), language="x" * 17)),
        ("prompt", _req(A, "ten-a-prompt", silence_pcm16(0.5), prompt="word " * 1000)),
        ("edge.text", asr_pb2.TranscribeRequest(segment_id="ten-a-edge", device_id=A, audio=silence_pcm16(0.5),
                                                edge=asr_pb2.EdgeHypothesis(text="y" * 5000))),
    ]
    for field, req in cases:
        for rpc in (stub.Transcribe, stub.Submit):
            err = _refused(lambda: rpc(req, metadata=md, timeout=60))  # noqa: B023 (called at once)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, field
            details = str(err.details())
            assert field in details and "limit" in details and len(details) < 300, details[:300]
    for field, model_req in {
        "name": asr_pb2.ModelRequest(name="m" * 200, file="encoder.onnx"),
        "file": asr_pb2.ModelRequest(name="demo", file="f" * 300),
        "version": asr_pb2.ModelRequest(name="demo", file="encoder.onnx", version="9" * 100),
    }.items():
        err = _refused(lambda: list(stub.FetchModel(model_req, metadata=md, timeout=30)))  # noqa: B023
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and field in str(err.details()), field
    assert server.servicer.batcher.items_run == before_run
    assert rds.xlen(server.config.stream) == before_queue
    assert max((len(k) for k in rds.scan_iter("*")), default=0) <= LONGEST_KEY
    assert not [k for k in rds.scan_iter("asr:result:*") if b"xxxx" in k]


def test_the_edges_own_segment_ids_comply_even_for_the_longest_device_id() -> None:
    # Imported here, not at the top: the same file then runs (and shows what fails) against the code before the
    # limits existed.
    import numpy as np

    from cloud_service.api.limits import MAX_DEVICE_ID_CHARS, MAX_SEGMENT_ID_CHARS, check_segment_owner
    from edge_node.daemon.daemon import EdgeDaemon, stdin_stream_id
    from edge_node.daemon.sources import AudioChunk, read_file

    device = "d" * MAX_DEVICE_ID_CHARS
    daemon: Any = SimpleNamespace(config=SimpleNamespace(device_id=device))
    year_s = 365 * 24 * 3600.0
    chunks = [
        read_file(data_prompts("en")[0].wav),  # a file: its content hash
        # stdin after a year of audio: the largest offsets the key and the segment start will see
        AudioChunk(f"{stdin_stream_id()}-{int(year_s * 16000)}", "stdin", year_s, np.zeros(1, np.float32)),
    ]
    for chunk in chunks:
        seg_id = EdgeDaemon.segment_id(daemon, chunk, SimpleNamespace(start=29.999))  # type: ignore[arg-type]
        check_segment_owner(seg_id, device)
        assert len(seg_id) <= MAX_SEGMENT_ID_CHARS, seg_id


def test_device_ids_that_would_make_keys_ambiguous_are_refused(rds_server: RedisServer) -> None:
    for bad in ("a:b", "d" * 65, "with space"):
        with pytest.raises(ValueError):
            register_device(rds_server.url, bad)


def test_results_and_submit_jobs_are_namespaced_even_for_prefix_sharing_devices(
    server: ServerThread, tiny_asr: AsrModel, stub: Stub, tokens: dict[str, str], rds: redis.Redis
) -> None:
    seg = "ten-c-x-1"  # valid for both ten-c and ten-c-x
    theirs = stub.Transcribe(_req(C, seg, silence_pcm16(0.5)), metadata=bearer(tokens[C]), timeout=180)
    assert theirs.device_id == C
    assert wait_for(lambda: bool(_stored(rds, seg)), 10.0, interval=0.02)

    # ten-c-x submits the same id: the job records the authenticated device; the worker decodes it afresh
    # instead of reusing ten-c's result.
    reply = stub.Submit(_req(CX, seg, silence_pcm16(0.5)), metadata=bearer(tokens[CX]), timeout=60)
    entries: Any = rds.xrange(server.config.stream, reply.stream_id, reply.stream_id)
    entry: dict[bytes, bytes] = entries[0][1]
    _drain(StreamWorker(server.config, tiny_asr, rds, None))
    # The sync path of ten-c-x finds its own (the worker's) result, not ten-c's.
    mine = stub.Transcribe(_req(CX, seg, silence_pcm16(0.5)), metadata=bearer(tokens[CX]), timeout=60)
    assert mine.cached and mine.device_id == CX
    assert set(_stored(rds, seg)) == {f"asr:result:{C}:{seg}".encode(), f"asr:result:{CX}:{seg}".encode()}
    raw: Any = rds.get(f"asr:result:{C}:{seg}")
    stored = asr_pb2.TranscribeResponse.FromString(raw or b"")
    assert stored.device_id == C  # ten-c's own result untouched
    assert entry.get(b"device") == CX.encode()  # the job carries the device it was admitted for


def test_a_queued_job_without_its_admitting_device_is_dropped(
    server: ServerThread, tiny_asr: AsrModel, rds: redis.Redis
) -> None:
    req = _req(A, "ten-a-legacy-1", silence_pcm16(0.5))
    # A job as an older server queued it: no record of the authenticated device.
    rds.xadd(server.config.stream, {"request": req.SerializeToString(), "fleet": "lab",
                                    "segment_id": req.segment_id, "enqueued": f"{time.time():.3f}"})
    _drain(StreamWorker(server.config, tiny_asr, rds, None))
    assert not _stored(rds, "ten-a-legacy-1")
    assert not rds.xpending(server.config.stream, server.config.group)["pending"]  # acknowledged, not retried
