"""Fixtures and helpers for the cloud-service tests: the base model loaded once, gRPC servers in a thread."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from cloud_service.api.server import _SERVICERS, EscalationServicer, create_server, stop_server
from cloud_service.asr.model import AsrModel
from cloud_service.config import CloudConfig
from cloud_service.jobs.store import register_device as register
from proto.asr.v1 import asr_pb2_grpc
from testkit.servers import RedisServer
from tests.audio_fixtures import encoded_audio, need_prompts, pcm16_audio, silence_pcm16  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def load_asr(path: Path) -> AsrModel:
    # One copy per checkpoint and test process, whichever module asks first.
    return AsrModel.load(path, device="cpu")


@pytest.fixture(scope="session")
def base_asr(base_checkpoint: Path) -> AsrModel:
    return load_asr(base_checkpoint)


@pytest.fixture(scope="session")
def cloud_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("cloud-redis"))
    server.start()
    yield server
    server.stop()


def register_device(redis_url: str, name: str) -> str:
    """Register `name` in the Redis at `redis_url` (what `fleetctl device add` does); returns its token."""
    with redis.Redis.from_url(redis_url) as client:
        return register(client, name)


class ServerThread:
    """A real grpc.aio server (create_server) on 127.0.0.1:0, run by an event loop in a thread."""

    def __init__(self, config: CloudConfig, asr: AsrModel) -> None:
        self.config = config
        self.asr = asr
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="grpc-loop", daemon=True)
        self.server: grpc.aio.Server | None = None
        self.port = 0

    def run(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> int:
        self.server, port = create_server(self.config, "127.0.0.1:0", asr=self.asr)
        await self.server.start()
        return port

    def __enter__(self) -> ServerThread:
        self.thread.start()
        self.port = self.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.run(stop_server(self.server, 1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def servicer(self) -> EscalationServicer:
        assert self.server is not None
        return _SERVICERS[self.server]

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def stub(self) -> asr_pb2_grpc.EscalationServiceStub:
        return asr_pb2_grpc.EscalationServiceStub(self.channel())


def cloud_config(redis_url: str | None, **kw: Any) -> CloudConfig:
    base = CloudConfig(
        model=str(ROOT / "models" / "base.pt"),
        device="cpu",
        redis_url=redis_url,
        redis_retry_s=0.2,
        max_wait_ms=20.0,
    )
    return replace(base, **kw)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]
