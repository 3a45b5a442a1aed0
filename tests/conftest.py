"""Fixtures for every test: the model artifacts and keys that `make test` builds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.prereq import require

if TYPE_CHECKING:
    from cloud_service.asr.model import AsrModel

# tests/compose drives the docker-compose stack: `make compose-test` runs it (after building the images) with
# WHISPER_FLEET_COMPOSE=1; a plain `pytest` leaves it out.
collect_ignore = [] if os.environ.get("WHISPER_FLEET_COMPOSE") == "1" else ["compose"]

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
KEYS = ROOT / "keys"


def _need(path: Path) -> Path:
    require(path.exists(), f"{path} is missing")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    return _need(MODELS / "tiny.en.pt")


@pytest.fixture(scope="session")
def base_checkpoint() -> Path:
    return _need(MODELS / "base.pt")


@pytest.fixture(scope="session")
def tiny_asr(tiny_checkpoint: Path) -> AsrModel:
    """openai-whisper with the tiny.en weights: a real model, cheaper than base, for tests of the server itself
    (loaded once per test process; torch is imported only by the tests that ask for it)."""
    from tests.integration.cloud_fixtures import load_asr

    return load_asr(tiny_checkpoint)


@pytest.fixture(scope="session")
def edge_artifact() -> Path:
    return _need(MODELS / "tiny.en-int8" / "manifest.json").parent


@pytest.fixture(scope="session")
def operator_pubkey() -> Path:
    return _need(KEYS / "operator.pub")
