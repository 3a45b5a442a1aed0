"""The escalation rules the hybrid harness applies per segment (pure: no I/O).

They are the edge's shipped policy (edge_node/core/confidence.py `escalates`, the rule `judge` applies), with one
knob moved, `ConfidenceConfig.escalate_below`, so the sweep equals the shipped behaviour at its default: a segment
escalates when its `confidence` is below the threshold, or (with `escalate_on_fallback`) when it was decoded only
after temperature fallback. Segments the edge dropped as non-speech never reach here: they have no text to revise.
The no-speech and repetition rules of `judge` cap `confidence` at 0.1 (0.0 when dropped), so they act through
the same number. The language hint is the edge's own (edge_node/core/escalation_policy.py `language_hint`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

from edge_node.core import confidence as conf
from edge_node.core.escalation_policy import EscalationBudget, EscalationPolicy


def escalates(confidence: float, temperature: float, threshold: float, cfg: conf.ConfidenceConfig) -> bool:
    """The shipped `escalate` flag of a kept segment, with `threshold` in place of `cfg.escalate_below`."""
    return conf.escalates(confidence, temperature, replace(cfg, escalate_below=threshold))


def budget_refusals(stream: Sequence[tuple[float, Sequence[float]]], policy: EscalationPolicy) -> tuple[int, float]:
    """Escalations the shipped rolling budget would refuse, for clips played back to back as one device's
    stream (audio time as the clock): `stream` holds (clip seconds, the escalated seconds it asks for).
    Returns (refused requests, refused seconds)."""
    budget = EscalationBudget(policy)
    now, refused, refused_s = 0.0, 0, 0.0
    for duration, asks in stream:
        now += duration
        budget.observe(now, duration)
        for seconds in asks:
            if not budget.try_spend(now, seconds):
                refused += 1
                refused_s += seconds
    return refused, refused_s


def window_for(start: float, end: float, windows: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The decoding window a segment came from (the most overlap with its span; the nearest if none): what the
    edge sends. A segment's own span comes from word timings, which on a hallucinated segment ("Thank you for
    watching!" over 4 s of French) may cover a fraction of the speech."""
    if not windows:
        raise ValueError("a segment without a window")

    def key(w: tuple[float, float]) -> float:
        return min(end, w[1]) - max(start, w[0])  # the overlap; minus the gap when they do not meet

    return max(windows, key=key)


def pieces(n_samples: int, max_samples: int) -> Iterator[tuple[int, int]]:
    """[start, end) sample ranges of at most `max_samples` covering `n_samples` (one empty clip: none)."""
    for a in range(0, n_samples, max_samples):
        yield a, min(n_samples, a + max_samples)
