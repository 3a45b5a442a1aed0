"""Shared fixtures: real servers on free ports, the model artifacts that `make test` builds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import MosquittoServer, RedisServer

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
KEYS = ROOT / "keys"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is missing: run `make setup` to build the model artifacts")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    return _need(MODELS / "tiny.en.pt")


@pytest.fixture(scope="session")
def base_checkpoint() -> Path:
    return _need(MODELS / "base.pt")


@pytest.fixture(scope="session")
def edge_artifact() -> Path:
    return _need(MODELS / "tiny.en-int8" / "manifest.json").parent


@pytest.fixture(scope="session")
def operator_pubkey() -> Path:
    return _need(KEYS / "operator.pub")


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def mosquitto_server(tmp_path: Path) -> Iterator[MosquittoServer]:
    server = MosquittoServer(tmp_path / "mosquitto")
    server.start()
    yield server
    server.stop()
