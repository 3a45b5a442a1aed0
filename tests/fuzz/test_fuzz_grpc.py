"""Fuzz the real gRPC server (issue 13): generated TranscribeRequest and ModelRequest messages from an
authenticated device. Every case ends in a clear error status or a correct result; afterwards the server still
answers health checks and transcribes real speech correctly. Real Redis, real whisper weights (tiny.en), real
artifacts (the edge model build).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_service.asr.model import AsrModel
from evaluation.scoring import word_errors, words
from proto.asr.v1 import asr_pb2, asr_pb2_grpc
from testkit.servers import RedisServer
from tests.audio_fixtures import data_prompts, pcm16_audio
from tests.fuzz.conftest import EXAMPLES, fuzz_settings
from tests.fuzz.strategies import floats_any, hostile_text, model_files, valid_audio, wire_audio
from tests.integration.cloud_fixtures import (
    ServerThread,
    bearer,
    cloud_config,
    register_device,
)

pytestmark = [pytest.mark.fuzz, pytest.mark.slow, pytest.mark.redis]

DEVICE, OTHER = "fz-a", "fz-b"
# What a hostile request may end in: refused for what it says (a body claiming another device: not this
# token's). Never UNKNOWN/INTERNAL, never a hang; and not RESOURCE_EXHAUSTED either: the calls come one at a
# time with the rate limit off, so "busy" would be a bug (it once was: a refusal echoing a 10 kB device id
# overflowed gRPC's metadata limit).
CLEAR_REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED,
                  grpc.StatusCode.PERMISSION_DENIED}
MODEL_REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE,
                  grpc.StatusCode.PERMISSION_DENIED}
ARTIFACT = "tiny.en-int8"
TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def rds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("fuzz-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(tiny_asr: AsrModel, rds: RedisServer, edge_artifact: Path) -> Iterator[ServerThread]:
    config = cloud_config(rds.url, rate_limit_per_min=0, models_root=edge_artifact.parent)
    with ServerThread(config, tiny_asr) as srv:
        yield srv


@pytest.fixture(scope="module")
def token(rds: RedisServer) -> str:
    register_device(rds.url, OTHER)
    return register_device(rds.url, DEVICE)


class Stub(asr_pb2_grpc.EscalationServiceStub):
    def __init__(self, channel: grpc.Channel) -> None:
        super().__init__(channel)
        self.channel = channel  # for the health check after the storm


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Stub:
    return Stub(server.channel())


def _segment_ids() -> st.SearchStrategy[str]:
    own = st.builds(lambda s: f"{DEVICE}-{s}", st.text(min_size=1, max_size=40))
    return st.one_of(own, own, st.builds(lambda s: f"{OTHER}-{s}", st.text(max_size=20)), hostile_text())


def _edge() -> st.SearchStrategy[asr_pb2.EdgeHypothesis]:
    f32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
    return st.builds(asr_pb2.EdgeHypothesis, text=hostile_text(), avg_logprob=f32, no_speech_prob=f32,
                     compression_ratio=f32, confidence=f32, model_version=hostile_text(40))


def _hostile_requests() -> st.SearchStrategy[asr_pb2.TranscribeRequest]:
    return st.builds(
        asr_pb2.TranscribeRequest,
        segment_id=_segment_ids(),
        # Mostly the token's own device, so most cases get past authentication to the fields behind it.
        device_id=st.one_of(st.just(DEVICE), st.just(DEVICE), st.just(DEVICE), st.just(OTHER), hostile_text(80)),
        audio=wire_audio(),
        language=st.one_of(st.sampled_from(["en", "detect", "", "es", "xx", "english", "yue"]), hostile_text(40)),
        edge=_edge(),
        prompt=st.one_of(st.just(""), st.just("Asterisk voicemail"), hostile_text(300)),
        segment_start=floats_any(),
    )


def _well_formed_requests() -> st.SearchStrategy[asr_pb2.TranscribeRequest]:
    """Requests a real edge could send (each reaches the model): valid ids, audio, languages, prompts."""
    return st.builds(
        asr_pb2.TranscribeRequest,
        segment_id=st.builds(lambda s: f"{DEVICE}-{s}", st.text(min_size=1, max_size=40)),
        device_id=st.sampled_from([DEVICE, ""]),
        audio=valid_audio(),
        language=st.sampled_from(["en", "detect", "es", ""]),
        edge=_edge(),
        prompt=st.one_of(st.just(""), st.text(max_size=60).filter(lambda t: "<|" not in t and "\x00" not in t)),
        segment_start=st.floats(0, 86_400),
    )


def transcribe_requests() -> st.SearchStrategy[asr_pb2.TranscribeRequest]:
    # About one case in six reaches the model (a decode costs far more than a refusal).
    return st.one_of(_well_formed_requests(), *[_hostile_requests()] * 5)


def _check_response(req: asr_pb2.TranscribeRequest, resp: asr_pb2.TranscribeResponse) -> None:
    assert resp.segment_id == req.segment_id
    assert resp.device_id == DEVICE  # the authenticated device, whatever the body claimed
    assert req.segment_id.startswith(f"{DEVICE}-")
    assert isinstance(resp.text, str) and len(resp.text) < 10_000
    for seg in resp.segments:
        assert math.isfinite(seg.start) and math.isfinite(seg.end) and 0 <= seg.start <= seg.end


def test_transcribe_fuzz(stub: Stub, token: str) -> None:
    outcomes: Counter[str] = Counter()

    @fuzz_settings
    @given(req=transcribe_requests(), rpc=st.sampled_from(["Transcribe", "Submit"]))
    def case(req: asr_pb2.TranscribeRequest, rpc: str) -> None:
        try:
            resp = getattr(stub, rpc)(req, metadata=bearer(token), timeout=TIMEOUT_S)
        except grpc.RpcError as err:
            outcomes[err.code().name] += 1
            assert err.code() in CLEAR_REFUSALS, f"{rpc}: {err.code()} {err.details()}"
            assert err.details(), "a refusal must say why"
            return
        outcomes[f"{rpc} OK"] += 1
        if rpc == "Transcribe":
            _check_response(req, resp)
        else:
            assert resp.segment_id == req.segment_id and resp.stream_id

    case()
    print("Transcribe/Submit fuzz outcomes:", dict(outcomes))
    assert outcomes["INVALID_ARGUMENT"] > 0 and outcomes["Transcribe OK"] > EXAMPLES // 20  # both paths reached
    _still_healthy(stub, token)


def _still_healthy(stub: Stub, token: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(stub.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    prompt = data_prompts("en")[0]
    resp = stub.Transcribe(
        asr_pb2.TranscribeRequest(segment_id=f"{DEVICE}-after-fuzz", device_id=DEVICE,
                                  audio=pcm16_audio(prompt.wav), language="en"),
        metadata=bearer(token), timeout=TIMEOUT_S,
    )
    ref = words(prompt.text, "en")
    assert word_errors(ref, words(resp.text, "en")) <= 0.25 * len(ref), resp.text


def model_requests(files: list[str]) -> st.SearchStrategy[asr_pb2.ModelRequest]:
    hostile = st.builds(
        asr_pb2.ModelRequest,
        name=st.one_of(st.just(ARTIFACT), st.sampled_from(["..", ".", "", "/etc", f"{ARTIFACT}/.."]), hostile_text()),
        version=st.one_of(st.just(""), hostile_text(80)),
        file=st.one_of(st.sampled_from(files), st.sampled_from(["../../../etc/hostname", "/etc/passwd", ".", ""]),
                       hostile_text(300)),
        offset=st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 4096)),
    )
    # What an edge resuming a download sends: a real file, from some offset (past the end now and then).
    well_formed = st.builds(asr_pb2.ModelRequest, name=st.just(ARTIFACT), version=st.just(""),
                            file=st.sampled_from(files), offset=st.integers(0, 3000))
    return st.one_of(well_formed, hostile, hostile)


def test_fetch_model_fuzz(stub: Stub, token: str, edge_artifact: Path) -> None:
    root, files = edge_artifact.parent, model_files(edge_artifact.parent, ARTIFACT)
    small = [f for f in files if (root / ARTIFACT / f).stat().st_size < 1_000_000]  # keep a case cheap
    outcomes: Counter[str] = Counter()

    @fuzz_settings
    @given(req=model_requests(small), tail=st.booleans())
    def case(req: asr_pb2.ModelRequest, tail: bool) -> None:
        try:
            chunks = list(stub.FetchModel(req, metadata=bearer(token), timeout=TIMEOUT_S))
        except grpc.RpcError as err:
            outcomes[err.code().name] += 1
            assert err.code() in MODEL_REFUSALS, f"{err.code()} {err.details()}"
            assert err.details()
            return
        outcomes["OK"] += 1
        path = root / req.name / req.file
        assert req.name == ARTIFACT and req.file in small, (req.name, req.file)
        data = path.read_bytes()
        got = b"".join(c.data for c in chunks)
        assert got == data[req.offset:]
        for c in chunks:
            assert c.total_size == len(data) and c.file == req.file
        if chunks and req.file not in ("manifest.json", "manifest.sig"):
            assert chunks[0].sha256 == hashlib.sha256(data).hexdigest()

    case()
    print("FetchModel fuzz outcomes:", dict(outcomes))
    assert outcomes["OK"] > EXAMPLES // 20 and outcomes["NOT_FOUND"] > 0
    _still_healthy(stub, token)
