"""What the edge sends to the cloud: the per-segment decision, the escalation budget and the language hint. Pure: no
I/O, no clock.

`decide` is the one escalation decision: edge_node/core/confidence.py's verdict (confidence, `escalate`) under the
thresholds in force, the operator's optional log-prob cap, and the language the cloud should assume. The budget
then says whether an escalation the segment wants is affordable.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from edge_node.core.confidence import ConfidenceConfig, SegmentFeatures, judge
from shared.whisper_rules import DETECT


@dataclass(frozen=True)
class EscalationPolicy:
    device_language: str = "en"
    # The English-only model turns foreign speech into fluent English it is unsure of; a segment this unsure is
    # sent with "detect" so the cloud identifies the language instead of forcing English (which would translate).
    # Calibrated with the confidence model: English prompts score above 0.6 in 95-98 % of cases.
    detect_language_below: float = 0.35
    # At most this share of audio seconds escalated per rolling window: the cloud's cost cap per device.
    budget_fraction: float = 0.5
    budget_window_s: float = 600.0
    # The share is taken of at least this much audio, so the first segments after boot are not all refused.
    budget_min_basis_s: float = 120.0
    # Optional hard caps an operator may push (None: off): escalations per minute, and a mean token log-prob
    # below which a segment escalates whatever its confidence.
    max_per_min: int | None = None
    escalate_logprob_below: float | None = None


@dataclass(frozen=True)
class Decision:
    confidence: float  # in [0, 1]
    escalate: bool  # the segment wants the cloud's answer (before the budget is asked)
    drop: bool  # the text is probably not speech
    language: str  # the hint an escalation carries: the device's language, or DETECT


def decide(features: SegmentFeatures, cfg: ConfidenceConfig, policy: EscalationPolicy) -> Decision:
    """One segment's escalation decision under the confidence thresholds and the policy in force."""
    verdict = judge(features, cfg)
    return Decision(
        confidence=verdict.confidence,
        escalate=wants_escalation(verdict.escalate, features.avg_logprob, policy),
        drop=verdict.drop,
        language=language_hint(verdict.confidence, policy),
    )


def wants_escalation(edge_flag: bool, avg_logprob: float, policy: EscalationPolicy) -> bool:
    below = policy.escalate_logprob_below
    return edge_flag or (below is not None and avg_logprob < below)


def language_hint(confidence: float, policy: EscalationPolicy) -> str:
    return DETECT if confidence < policy.detect_language_below else policy.device_language


class EscalationBudget:
    """Rolling-window accounting of audio seconds seen and escalated. Times are passed in (seconds, monotonic)."""

    def __init__(self, policy: EscalationPolicy) -> None:
        self.policy = policy
        self._seen: deque[tuple[float, float]] = deque()
        self._recent: deque[float] = deque()  # escalation times in the last minute (max_per_min)
        self._escalated: deque[tuple[float, float]] = deque()
        self._seen_s = 0.0
        self._escalated_s = 0.0

    def _expire(self, now: float) -> None:
        horizon = now - self.policy.budget_window_s
        while self._seen and self._seen[0][0] < horizon:
            self._seen_s -= self._seen.popleft()[1]
        while self._escalated and self._escalated[0][0] < horizon:
            self._escalated_s -= self._escalated.popleft()[1]

    def observe(self, now: float, audio_s: float) -> None:
        """Count audio the edge transcribed (escalated or not)."""
        self._expire(now)
        self._seen.append((now, audio_s))
        self._seen_s += audio_s

    def try_spend(self, now: float, audio_s: float) -> bool:
        """Reserve `audio_s` of escalation if the window's share stays within budget."""
        self._expire(now)
        basis = max(self._seen_s, self.policy.budget_min_basis_s)
        if self._escalated_s + audio_s > self.policy.budget_fraction * basis:
            return False
        while self._recent and self._recent[0] < now - 60.0:
            self._recent.popleft()
        if self.policy.max_per_min is not None and len(self._recent) >= self.policy.max_per_min:
            return False
        self._recent.append(now)
        self._escalated.append((now, audio_s))
        self._escalated_s += audio_s
        return True

    @property
    def escalated_fraction(self) -> float:
        return self._escalated_s / self._seen_s if self._seen_s else 0.0
