"""Segment confidence and the escalation decision: a pure policy over decoding features.

Thresholds sit in `ConfidenceConfig` (frozen) so an operator can push new ones (a later issue does so over
MQTT). Calibrated on Asterisk prompts with bench/edge_confidence.py: clean English vs Spanish/French, which
the English-only model turns into fluent-looking English that it is nevertheless unsure of token by token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shared.whisper_rules import COMPRESSION_RATIO_THRESHOLD, NO_SPEECH_THRESHOLD


@dataclass(frozen=True)
class ConfidenceConfig:
    """Policy parameters (an operator may push new ones).

    confidence = sigmoid(bias + w_logprob * avg_logprob + w_log_min_prob * ln(min token prob)
    + w_entropy * mean entropy): a logistic model fitted by bench/edge_confidence.py (`--fit`) on Asterisk
    prompts, clean English against Spanish and French, with a two-fold split by prompt id.
    """

    bias: float = 5.43
    w_logprob: float = 2.17  # per unit of mean token log-probability
    w_log_min_prob: float = 1.74  # per unit of ln(least likely token's probability)
    w_entropy: float = -0.83  # per nat of mean next-token entropy
    # Escalate below this confidence (cross-validated: 2-5 % of English, 96-100 % of es/fr flagged).
    escalate_below: float = 0.6
    # Whisper's own signals, as hard rules: a likely silence, and repetitive text (gzip ratio) = a loop.
    no_speech_ceiling: float = NO_SPEECH_THRESHOLD
    compression_ceiling: float = COMPRESSION_RATIO_THRESHOLD
    # A segment decoded only after temperature fallback was not understood at temperature 0.
    escalate_on_fallback: bool = True
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
    """One confidence in [0, 1], an escalate flag and a drop (not speech) flag for a segment's features."""
    drop = f.n_tokens <= 1 or (
        f.no_speech_prob > cfg.drop_no_speech_above and f.avg_logprob < cfg.drop_logprob_below
    )
    score = (
        cfg.bias
        + cfg.w_logprob * max(f.avg_logprob, -20.0)
        + cfg.w_log_min_prob * math.log(max(f.min_token_prob, 1e-9))
        + cfg.w_entropy * min(f.mean_entropy, 20.0)
    )
    confidence = _sigmoid(score)
    if f.no_speech_prob > cfg.no_speech_ceiling or f.compression_ratio > cfg.compression_ceiling:
        confidence = min(confidence, 0.0 if drop else 0.1)
    escalate = escalates(confidence, f.temperature, cfg) or drop
    return Verdict(confidence=round(confidence, 4), escalate=escalate, drop=drop)


def escalates(confidence: float, temperature: float, cfg: ConfidenceConfig = ConfidenceConfig()) -> bool:
    """The escalate rule of a kept segment (`judge` also escalates what it drops): its confidence is below the
    threshold, or (with `escalate_on_fallback`) it was decoded only after temperature fallback."""
    return confidence < cfg.escalate_below or (cfg.escalate_on_fallback and temperature > 0)
