"""Scores as people and programs read them: JSON objects per clip and per run, and plain-text tables."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from evaluation.scoring import OperatingPoint, RowScore


def row_json(s: RowScore) -> dict[str, Any]:
    """One scored clip, for a per-clip dump (what failed, and how)."""
    return {
        "id": s.row.id,
        "condition": s.row.condition,
        "reference": s.row.text,
        "hypothesis": s.hyp.text,
        "language": s.hyp.language,
        "ref_words": s.ref_words,
        "errors": s.errors,
        "escalated_seconds": s.hyp.escalated_seconds,
        "latency_s": s.hyp.latency_s,
    }


def results_json(
    edge: OperatingPoint | None,
    cloud: OperatingPoint | None,
    hybrid: Iterable[OperatingPoint] = (),
    chosen: OperatingPoint | None = None,
) -> dict[str, Any]:
    """Issue 7's top-level JSON object: `edge`, `cloud`, `hybrid` (list) and `chosen`."""
    return {
        "edge": edge.to_json() if edge else None,
        "cloud": cloud.to_json() if cloud else None,
        "hybrid": [p.to_json() for p in hybrid],
        "chosen": chosen.to_json() if chosen else None,
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def format_table(points: Mapping[str, OperatingPoint]) -> str:
    """WER (%) per condition, one column per system; then the summary figures."""
    names = list(points)
    conds = list(dict.fromkeys(c for p in points.values() for c in p.wer_by_condition))
    head = f"{'condition':<18}" + "".join(f"{n:>12}" for n in names)
    lines = [head, "-" * len(head)]
    for c in conds:
        lines.append(f"{c:<18}" + "".join(f"{_pct(points[n].wer_by_condition.get(c)):>12}" for n in names))
    rows: list[tuple[str, Callable[[OperatingPoint], str]]] = [
        ("WER overall", lambda p: _pct(p.wer)),
        ("WER English", lambda p: _pct(p.wer_by_language.get("en"))),
        ("no-speech words", lambda p: str(p.no_speech_words)),
        ("escalated s %", lambda p: _pct(p.escalated_seconds_fraction)),
        ("non-en escal. %", lambda p: _pct(p.non_english_escalated)),
        ("lang-id acc. %", lambda p: _pct(p.language_id_accuracy)),
        ("p50 latency s", lambda p: f"{p.latency['p50_s']:.2f}" if p.latency else "-"),
    ]
    lines.append("-" * len(head))
    for label, get in rows:
        lines.append(f"{label:<18}" + "".join(f"{get(points[n]):>12}" for n in names))
    return "\n".join(lines)


def format_sweep(points: Iterable[OperatingPoint]) -> str:
    """One line per operating point of a threshold sweep: accuracy against what it costs."""
    head = (
        f"{'threshold':>9} {'WER %':>6} {'en WER':>6} {'segs esc%':>9} {'s esc%':>6} {'en s esc%':>9} "
        f"{'B/esc s':>8} {'non-en esc%':>11} {'lang-id%':>8} {'music w':>7} {'p50 s':>6}"
    )
    lines = [head, "-" * len(head)]
    for p in points:
        t = "-" if p.threshold is None else f"{p.threshold:g}"
        bps = "-" if p.bytes_per_escalated_second is None else f"{p.bytes_per_escalated_second:.0f}"
        p50 = f"{p.latency['p50_s']:.2f}" if p.latency else "-"
        lines.append(
            f"{t:>9} {_pct(p.wer):>6} {_pct(p.wer_by_language.get('en')):>6} "
            f"{_pct(p.escalated_segments_fraction):>9} {_pct(p.escalated_seconds_fraction):>6} "
            f"{_pct(p.english_escalated_seconds_fraction):>9} {bps:>8} {_pct(p.non_english_escalated):>11} "
            f"{_pct(p.language_id_accuracy):>8} {p.no_speech_words:>7} {p50:>6}"
        )
    return "\n".join(lines)
