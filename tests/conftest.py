"""Fixtures for every test: the model artifacts and keys that `make test` builds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.prereq import require

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
def edge_artifact() -> Path:
    return _need(MODELS / "tiny.en-int8" / "manifest.json").parent


@pytest.fixture(scope="session")
def operator_pubkey() -> Path:
    return _need(KEYS / "operator.pub")
