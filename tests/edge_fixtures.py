"""Session-scoped fixtures for the edge engine tests (import the names into a test module to use them)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from evaluation import asterisk
from tests.prereq import require


@pytest.fixture(scope="session")
def edge_engine(edge_artifact: Path) -> Any:
    from edge_node.engine.config import EdgeConfig
    from edge_node.engine.transcriber import EdgeTranscriber

    return EdgeTranscriber(EdgeConfig(model_dir=edge_artifact, threads=2))


@pytest.fixture(scope="session")
def edge_greedy_engine(edge_engine: Any) -> Any:
    """The same sessions, decoding greedily without temperature fallback or word timing (for comparisons)."""
    return edge_engine.with_config(replace(edge_engine.config, temperatures=(0.0,), word_timestamps=False))


@pytest.fixture(scope="session")
def whisper_tiny(tiny_checkpoint: Path) -> Any:
    import whisper
    return whisper.load_model(str(tiny_checkpoint), device="cpu")


def english_prompts(n: int, min_words: int = 4) -> list[asterisk.Prompt]:
    require(asterisk.available("en"), "Asterisk English prompts are not installed")
    ps = asterisk.prompts("en", min_words=min_words)
    return ps[:: max(1, len(ps) // n)][:n]  # spread over the alphabet, deterministic


def lang_prompts(lang: str, n: int) -> list[asterisk.Prompt]:
    require(asterisk.available(lang), f"Asterisk {lang} prompts are not installed")
    ps = asterisk.prompts(lang, min_words=4)
    return ps[:: max(1, len(ps) // n)][:n]
