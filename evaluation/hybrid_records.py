"""What a hybrid run records per clip, and the operating points it implies at any threshold (pure: no I/O).

The edge's segments and the cloud's answer for every segment that escalates at some threshold are recorded once;
each threshold's hybrid text is then derived here, so a sweep costs no further decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_node.core.escalation_policy import EscalationPolicy
from evaluation import hybrid_policy as policy
from evaluation.manifest import ManifestRow
from evaluation.scoring import Hypothesis, OperatingPoint, score
from shared.whisper_rules import DETECT

if TYPE_CHECKING:
    from edge_node.core.confidence import ConfidenceConfig
    from edge_node.engine.transcriber import Segment


@dataclass(frozen=True)
class CloudAnswer:
    text: str
    language: str
    seconds: float  # audio seconds sent
    bytes_sent: int  # serialized request size on the wire
    latency_s: float
    hint: str = ""  # the language hint sent


@dataclass
class ClipRecord:
    """One clip's edge result, and the cloud's answer for every segment that escalates at some threshold."""

    row: ManifestRow
    duration: float
    segments: tuple[Segment, ...]
    edge_latency_s: float
    answers: dict[int, CloudAnswer]
    cloud_only: CloudAnswer | None = None


def edge_hypothesis(rec: ClipRecord) -> Hypothesis:
    return Hypothesis(
        id=rec.row.id,
        text=" ".join(s.text for s in rec.segments).strip(),
        language="en",
        segments=len(rec.segments),
        latency_s=rec.edge_latency_s,
    )


def cloud_hypothesis(rec: ClipRecord) -> Hypothesis:
    assert rec.cloud_only is not None
    a = rec.cloud_only
    return Hypothesis(rec.row.id, a.text, a.language, 1, 1, a.seconds, a.bytes_sent, a.latency_s)


def hybrid_hypothesis(rec: ClipRecord, threshold: float, cfg: ConfidenceConfig) -> Hypothesis:
    """The clip's text at one threshold: escalated segments' edge text replaced by the cloud's revision."""
    texts, languages = [], []
    escalated, seconds, sent, latency = 0, 0.0, 0, rec.edge_latency_s
    for i, seg in enumerate(rec.segments):
        if policy.escalates(seg.confidence, seg.temperature, threshold, cfg):
            a = rec.answers[i]
            texts.append(a.text)
            languages.append(a.language)
            escalated += 1
            seconds += a.seconds
            sent += a.bytes_sent
            latency += a.latency_s
        else:
            texts.append(seg.text)
    language = max(set(languages), key=languages.count) if languages else "en"
    text = " ".join(t for t in texts if t).strip()
    return Hypothesis(rec.row.id, text, language, len(rec.segments), escalated, seconds, sent, latency)


def sweep(records: list[ClipRecord], thresholds: tuple[float, ...], cfg: ConfidenceConfig) -> list[OperatingPoint]:
    rows = [r.row for r in records]
    return [score(rows, [hybrid_hypothesis(r, t, cfg) for r in records], t) for t in sorted(set(thresholds))]


def check_default_matches(records: list[ClipRecord], cfg: ConfidenceConfig) -> int:
    """Segments whose shipped `escalate` flag differs from the sweep's rule at the default threshold (0)."""
    return sum(
        policy.escalates(s.confidence, s.temperature, cfg.escalate_below, cfg) != s.escalate
        for r in records
        for s in r.segments
    )


def budget_check(records: list[ClipRecord], threshold: float, cfg: ConfidenceConfig) -> dict[str, float]:
    """What the shipped rolling escalation budget (EscalationPolicy) would have refused at `threshold`, the
    clips played back to back in manifest order as one device's audio. Not applied to the figures."""
    stream = [
        (
            r.duration,
            [a.seconds for i, a in sorted(r.answers.items())
             if policy.escalates(r.segments[i].confidence, r.segments[i].temperature, threshold, cfg)],
        )
        for r in records
    ]  # fmt: skip
    refused, seconds = policy.budget_refusals(stream, EscalationPolicy())
    return {"budget_refused_at_default": refused, "budget_refused_seconds_at_default": round(seconds, 2)}


def detect_on_english(records: list[ClipRecord]) -> dict[str, int]:
    """English segments sent with "detect" (at the top threshold), and how many the cloud called non-English."""
    answers = [a for r in records if r.row.lang == "en" for a in r.answers.values() if a.hint == DETECT]
    return {
        "english_segments_sent_detect": len(answers),
        "english_detected_as_other": sum(a.language != "en" for a in answers),
    }


def record_json(rec: ClipRecord, cfg: ConfidenceConfig) -> dict[str, object]:
    return {
        "id": rec.row.id,
        "condition": rec.row.condition,
        "reference": rec.row.text,
        "edge": [
            {"start": s.start, "end": s.end, "text": s.text, "confidence": s.confidence, "escalate": s.escalate}
            for s in rec.segments
        ],
        "cloud_segments": {str(i): a.text for i, a in rec.answers.items()},
        "cloud_languages": {str(i): a.language for i, a in rec.answers.items()},
        "cloud_seconds": {str(i): a.seconds for i, a in rec.answers.items()},
        "cloud_only": rec.cloud_only.text if rec.cloud_only else None,
        "hybrid_default": hybrid_hypothesis(rec, cfg.escalate_below, cfg).text,
    }
