"""The cloud model's requests and results: frozen dataclasses, no torch (the API and the jobs use them)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class AsrRequest:
    samples: np.ndarray  # float32 mono 16 kHz, at most 30 s
    language: str | None  # None: detect per item
    prompt: str | None = None
    word_timestamps: bool = False  # align each word (cross-attention DTW): the REST API's words; gRPC never asks
    hotwords: tuple[str, ...] = ()  # contextual biasing phrases (cloud_service/asr/hotwords.py), checked on admission


@dataclass(frozen=True)
class AsrWord:
    word: str
    start: float
    end: float
    probability: float


@dataclass(frozen=True)
class AsrSegment:
    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float


@dataclass(frozen=True)
class AsrResult:
    text: str
    language: str
    segments: tuple[AsrSegment, ...]
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float
    batch_size: int = 1
    inference_ms: float = 0.0
    language_probs: dict[str, float] = field(default_factory=dict, compare=False)
    words: tuple[AsrWord, ...] = ()  # only when the request asked for word_timestamps
