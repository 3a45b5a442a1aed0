"""Score transcripts against the corpus manifest: WER per condition and overall, plus escalation statistics.

Rules (see docs/evaluation.md):
- References and hypotheses go through openai-whisper's EnglishTextNormalizer for English rows and
  BasicTextNormalizer (diacritics removed: the es/fr transcripts drop accents inconsistently) otherwise.
- WER is corpus-level: total errors (substitutions + deletions + insertions) / total reference words.
- A `""` reference (no speech) scores every emitted word as an error; those words are also counted in
  `no_speech_words`. A `null` reference is not scored for WER: it counts only towards language and escalation.
- A clip is escalated when any of its audio went to the cloud.

Everything here is pure except `evaluate`, which reads the manifest and calls a transcriber.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.manifest import ManifestRow, read_manifest
from shared.errors import UserError

log = logging.getLogger(__name__)

# The fleet's expected language: rows with an unknown language are normalised as English.
EXPECTED_LANGUAGE = "en"
# Cloud-only runs send all audio; without a figure from the transcriber, bytes are counted as 16 kHz PCM16.
PCM16_BYTES_PER_SECOND = 16000 * 2
_ELLIPSIS = re.compile(r"\.{2,}|…")


@dataclass(frozen=True)
class Hypothesis:
    """What a system produced for one clip, and what it cost."""

    id: str
    text: str
    language: str | None = None  # the language the system says it transcribed (cloud language id)
    segments: int = 1
    escalated_segments: int = 0
    escalated_seconds: float = 0.0
    bytes_sent: int = 0  # bytes sent to the cloud for this clip
    latency_s: float | None = None

    @property
    def escalated(self) -> bool:
        return self.escalated_segments > 0 or self.escalated_seconds > 0


@dataclass(frozen=True)
class RowScore:
    row: ManifestRow
    hyp: Hypothesis
    ref_words: int  # 0 for "" and null references
    errors: int  # 0 for null references
    scored: bool  # False for null references
    no_speech_words: int  # words emitted on a "" reference


@dataclass(frozen=True)
class ConditionScore:
    clips: int
    audio_seconds: float
    ref_words: int
    errors: int
    wer: float | None
    no_speech_words: int
    segments: int
    escalated_segments: int
    escalated_seconds: float
    escalated_seconds_fraction: float | None


@dataclass(frozen=True)
class OperatingPoint:
    """One system or threshold, in the JSON form of issue 7 (`to_json`)."""

    threshold: float | None
    wer: float | None
    wer_by_condition: dict[str, float | None]
    escalated_seconds_fraction: float | None
    bytes_per_escalated_second: float | None
    non_english_escalated: float | None
    no_speech_words: int
    escalated_segments_fraction: float | None
    english_escalated_seconds_fraction: float | None
    language_id_accuracy: float | None
    non_english_clips: int
    wer_by_language: dict[str, float | None]
    latency: dict[str, float] | None
    clips: int
    audio_seconds: float
    by_condition: dict[str, ConditionScore] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> OperatingPoint:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in obj.items() if k in known}  # tolerate keys added by newer writers
        data["by_condition"] = {k: ConditionScore(**v) for k, v in (data.get("by_condition") or {}).items()}
        return cls(**data)


@cache
def _normalizer(lang: str) -> Callable[[str], str]:
    from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

    normalize: Callable[[str], str] = (
        EnglishTextNormalizer() if lang == "en" else BasicTextNormalizer(remove_diacritics=True)
    )
    return normalize


def words(text: str, lang: str | None) -> list[str]:
    """The normalised words of `text` for scoring in `lang` (None: the expected language).

    Ellipses are blanked first and tokens without a letter or digit dropped: EnglishTextNormalizer keeps a
    lone "." from "conference..." (it preserves periods for decimals), which would count as a word.
    """
    text = _ELLIPSIS.sub(" ", text)
    return [w for w in _normalizer(lang or EXPECTED_LANGUAGE)(text).split() if any(c.isalnum() for c in w)]


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Substitutions + deletions + insertions (jiwer's alignment)."""
    if not reference:
        return len(hypothesis)
    if not hypothesis:
        return len(reference)
    import jiwer

    out = jiwer.process_words(" ".join(reference), " ".join(hypothesis))
    return int(out.substitutions + out.deletions + out.insertions)


def score_row(row: ManifestRow, hyp: Hypothesis) -> RowScore:
    if row.text is None:
        return RowScore(row, hyp, 0, 0, False, 0)
    ref, out = words(row.text, row.lang), words(hyp.text, row.lang)
    no_speech = len(out) if row.text == "" else 0
    return RowScore(row, hyp, len(ref), word_errors(ref, out), True, no_speech)


def score_rows(rows: Iterable[ManifestRow], hyps: Iterable[Hypothesis]) -> list[RowScore]:
    by_id = {h.id: h for h in hyps}
    rows = list(rows)
    missing = [r.id for r in rows if r.id not in by_id]
    if missing:
        raise ValueError(f"no hypothesis for {len(missing)} clip(s), e.g. {missing[:3]}")
    return [score_row(r, by_id[r.id]) for r in rows]


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def wer(scores: Iterable[RowScore]) -> float | None:
    scored = [s for s in scores if s.scored]
    return _ratio(sum(s.errors for s in scored), sum(s.ref_words for s in scored))


def escalated_segments_fraction(scores: Iterable[RowScore]) -> float | None:
    scores = list(scores)
    return _ratio(sum(s.hyp.escalated_segments for s in scores), sum(s.hyp.segments for s in scores))


def escalated_seconds_fraction(scores: Iterable[RowScore]) -> float | None:
    scores = list(scores)
    return _ratio(sum(s.hyp.escalated_seconds for s in scores), sum(s.row.duration for s in scores))


def bytes_per_escalated_second(scores: Iterable[RowScore]) -> float | None:
    scores = list(scores)
    return _ratio(sum(s.hyp.bytes_sent for s in scores), sum(s.hyp.escalated_seconds for s in scores))


def _non_english(scores: Iterable[RowScore]) -> list[RowScore]:
    return [s for s in scores if s.row.lang is not None and s.row.lang != EXPECTED_LANGUAGE]


def non_english_escalated(scores: Iterable[RowScore]) -> float | None:
    """Share of clips in a known language other than English that sent any audio to the cloud."""
    foreign = _non_english(scores)
    return _ratio(sum(s.hyp.escalated for s in foreign), len(foreign))


def language_id_accuracy(scores: Iterable[RowScore]) -> float | None:
    """Of the escalated non-English clips, the share whose reported language is the manifest's."""
    escalated = [s for s in _non_english(scores) if s.hyp.escalated]
    return _ratio(sum(s.hyp.language == s.row.lang for s in escalated), len(escalated))


def latency_summary(scores: Iterable[RowScore]) -> dict[str, float] | None:
    scores = list(scores)
    values = [s.hyp.latency_s for s in scores]
    if not values or any(v is None for v in values):
        return None
    lat = np.array(values, dtype=np.float64)
    audio = sum(s.row.duration for s in scores)
    return {
        "mean_s": float(lat.mean()),
        "p50_s": float(np.percentile(lat, 50)),
        "p95_s": float(np.percentile(lat, 95)),
        "max_s": float(lat.max()),
        "real_time_factor": float(lat.sum() / audio) if audio else 0.0,
    }


def condition_score(scores: list[RowScore]) -> ConditionScore:
    scored = [s for s in scores if s.scored]
    return ConditionScore(
        clips=len(scores),
        audio_seconds=sum(s.row.duration for s in scores),
        ref_words=sum(s.ref_words for s in scored),
        errors=sum(s.errors for s in scored),
        wer=wer(scores),
        no_speech_words=sum(s.no_speech_words for s in scores),
        segments=sum(s.hyp.segments for s in scores),
        escalated_segments=sum(s.hyp.escalated_segments for s in scores),
        escalated_seconds=sum(s.hyp.escalated_seconds for s in scores),
        escalated_seconds_fraction=escalated_seconds_fraction(scores),
    )


def _group(scores: Iterable[RowScore], key: Callable[[RowScore], str]) -> dict[str, list[RowScore]]:
    groups: dict[str, list[RowScore]] = {}
    for s in scores:
        groups.setdefault(key(s), []).append(s)
    return groups


def operating_point(scores: list[RowScore], threshold: float | None = None) -> OperatingPoint:
    by_condition = {c: condition_score(g) for c, g in _group(scores, lambda s: s.row.condition).items()}
    by_language = _group([s for s in scores if s.scored], lambda s: s.row.lang or "none")
    english = [s for s in scores if s.row.lang == EXPECTED_LANGUAGE]
    return OperatingPoint(
        threshold=threshold,
        wer=wer(scores),
        wer_by_condition={c: v.wer for c, v in by_condition.items()},
        escalated_seconds_fraction=escalated_seconds_fraction(scores),
        bytes_per_escalated_second=bytes_per_escalated_second(scores),
        non_english_escalated=non_english_escalated(scores),
        no_speech_words=sum(s.no_speech_words for s in scores),
        escalated_segments_fraction=escalated_segments_fraction(scores),
        english_escalated_seconds_fraction=escalated_seconds_fraction(english),
        language_id_accuracy=language_id_accuracy(scores),
        non_english_clips=len(_non_english(scores)),
        wer_by_language={k: wer(g) for k, g in by_language.items()},
        latency=latency_summary(scores),
        clips=len(scores),
        audio_seconds=sum(s.row.duration for s in scores),
        by_condition=by_condition,
    )


def score(
    rows: Iterable[ManifestRow], hyps: Iterable[Hypothesis], threshold: float | None = None
) -> OperatingPoint:
    return operating_point(score_rows(rows, hyps), threshold)


def hypothesis_from(row: ManifestRow, out: Mapping[str, Any], mode: str, latency_s: float) -> Hypothesis:
    """Fill a Hypothesis from a transcriber's dict; `mode` ("edge", "cloud", "hybrid") sets the defaults.

    Keys read: text (required), language, segments, escalated_segments, escalated_seconds, bytes_sent,
    latency_s. In "cloud" mode everything counts as escalated unless the dict says otherwise.
    """
    if mode not in ("edge", "cloud", "hybrid"):
        raise ValueError(f"mode must be edge, cloud or hybrid, not {mode!r}")
    segments = int(out.get("segments", 1))
    cloud = mode == "cloud"
    return Hypothesis(
        id=row.id,
        text=str(out["text"]),
        language=out.get("language"),
        segments=segments,
        escalated_segments=int(out.get("escalated_segments", segments if cloud else 0)),
        escalated_seconds=float(out.get("escalated_seconds", row.duration if cloud else 0.0)),
        bytes_sent=int(out.get("bytes_sent", round(row.duration * PCM16_BYTES_PER_SECOND) if cloud else 0)),
        latency_s=float(out.get("latency_s", latency_s)),
    )


def select_rows(
    rows: list[ManifestRow], per_condition: int | None = None, conditions: Collection[str] | None = None
) -> list[ManifestRow]:
    """The rows of the given conditions (all if None), at most the first `per_condition` of each."""
    if conditions is not None:
        unknown = set(conditions) - {r.condition for r in rows}
        if unknown:
            raise UserError(f"no clips of condition(s) {', '.join(sorted(unknown))} in the manifest")
        rows = [r for r in rows if r.condition in conditions]
    if per_condition is not None:
        rows = [r for g in _group_rows(rows).values() for r in g[:per_condition]]
    return rows


def evaluate(
    manifest: Path,
    transcribe: Callable[[Path], Mapping[str, Any]],
    mode: str = "edge",
    threshold: float | None = None,
    per_condition: int | None = None,
    conditions: Collection[str] | None = None,
    progress: bool = True,
) -> tuple[OperatingPoint, list[RowScore]]:
    """Run `transcribe(audio_path) -> {"text", ...}` over a manifest's clips (see `select_rows`) and score
    them; latency is the wall time of each call unless the dict reports one."""
    from tqdm import tqdm

    rows = select_rows(read_manifest(manifest), per_condition, conditions)
    hyps = []
    for row in tqdm(rows, desc=mode, unit="clip", disable=not progress):
        start = time.perf_counter()
        out = transcribe(manifest.parent / row.audio)
        hyps.append(hypothesis_from(row, out, mode, time.perf_counter() - start))
    scores = score_rows(rows, hyps)
    return operating_point(scores, threshold), scores


def _group_rows(rows: list[ManifestRow]) -> dict[str, list[ManifestRow]]:
    groups: dict[str, list[ManifestRow]] = {}
    for r in rows:
        groups.setdefault(r.condition, []).append(r)
    return groups
