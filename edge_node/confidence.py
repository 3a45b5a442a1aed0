"""Segment confidence and the escalation decision: a pure policy over decoding features.

Thresholds sit in `ConfidenceConfig` (frozen) so an operator can push new ones (a later issue does so over
MQTT). Calibrated on Asterisk prompts with bench/edge_confidence.py: clean English vs Spanish/French, which
the English-only model turns into fluent-looking English that it is nevertheless unsure of token by token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ConfidenceConfig:
    # Below this mean token log-probability a segment is suspect (whisper's own fallback level is -1.0).
    logprob_floor: float = -0.45
    # Scale (in log-prob units) of the soft step from "unsure" to "sure" around the floor.
    logprob_scale: float = 0.12
    # A token the model gave less than this probability is a strong sign of guessing ...
    min_token_prob_floor: float = 0.05
    # ... as is a high mean entropy (nats) of the next-token distribution.
    entropy_ceiling: float = 1.2
    # Whisper's own "this is silence" signal.
    no_speech_ceiling: float = 0.6
    # Repetitive text (gzip ratio) is a hallucination loop.
    compression_ceiling: float = 2.4
    # A segment decoded only after temperature fallback was not understood at temperature 0.
    escalate_on_fallback: bool = True
    # The final decision: escalate when the combined confidence is below this.
    escalate_below: float = 0.5
    # Drop the segment's words when it is probably not speech (music, noise): the hallucination guard.
    drop_no_speech_above: float = 0.5
    drop_logprob_below: float = -0.7


@dataclass(frozen=True)
class SegmentFeatures:
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    min_token_prob: float
    mean_entropy: float
    temperature: float  # the temperature that produced the text (> 0 after fallback)
    n_tokens: int


@dataclass(frozen=True)
class Verdict:
    confidence: float  # in [0, 1]
    escalate: bool
    drop: bool  # the text is probably not speech: emit no words


def features(
    token_logprobs: list[float] | tuple[float, ...],
    token_entropies: list[float] | tuple[float, ...],
    no_speech_prob: float,
    compression_ratio: float,
    temperature: float,
) -> SegmentFeatures:
    """Features of one segment from its tokens' log-probabilities and entropies (the closing token
    included)."""
    lp = np.asarray(token_logprobs, dtype=np.float64)
    ent = np.asarray(token_entropies, dtype=np.float64)
    return SegmentFeatures(
        avg_logprob=float(lp.mean()) if lp.size else -math.inf,
        no_speech_prob=float(no_speech_prob),
        compression_ratio=float(compression_ratio),
        min_token_prob=float(np.exp(lp.min())) if lp.size else 0.0,
        mean_entropy=float(ent.mean()) if ent.size else math.inf,
        temperature=float(temperature),
        n_tokens=int(lp.size),
    )


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


def judge(f: SegmentFeatures, cfg: ConfidenceConfig = ConfidenceConfig()) -> Verdict:
    """Combine the features into one confidence in [0, 1], an escalate flag and a drop (not speech) flag."""
    drop = f.n_tokens <= 1 or (
        f.no_speech_prob > cfg.drop_no_speech_above and f.avg_logprob < cfg.drop_logprob_below
    )
    # Each factor is a soft step in [0, 1]; the product is low when any one sign of doubt is strong.
    c_logprob = _sigmoid((f.avg_logprob - cfg.logprob_floor) / cfg.logprob_scale)
    c_min = _sigmoid(4.0 * (math.log(max(f.min_token_prob, 1e-12)) - math.log(cfg.min_token_prob_floor)))
    c_entropy = _sigmoid(4.0 * (cfg.entropy_ceiling - f.mean_entropy))
    c_speech = _sigmoid(10.0 * (cfg.no_speech_ceiling - f.no_speech_prob))
    c_repeat = _sigmoid(5.0 * (cfg.compression_ceiling - f.compression_ratio))
    confidence = c_logprob * c_min**0.5 * c_entropy * c_speech * c_repeat
    escalate = confidence < cfg.escalate_below or (cfg.escalate_on_fallback and f.temperature > 0) or drop
    return Verdict(confidence=round(confidence, 4), escalate=escalate, drop=drop)
