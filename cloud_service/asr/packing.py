"""Packing short clips into one 30 s Whisper window (`--pack`): pure planning and splitting, no model.

On a CPU each clip pays a full 30 s encoder pass however short it is; escalated segments are mostly a few
seconds. Packing lays several clips of one decoding group (same language, prompt and hot-words) end to end with
`GAP_S` of silence between them, decodes the window once with timestamps, and gives each clip the segments whose
time falls inside its span. When that is not clear-cut (a segment straddles two clips, lies in a gap, or a clip
gets no segment at all) the split is refused and the caller decodes those clips one per window, so packing can
cost time but never mixes up two clips' words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000
WINDOW_S = 28.0  # of Whisper's 30 s: a margin for the last timestamp
GAP_S = 1.0  # silence between packed clips: long enough for Whisper to close a segment there
MAX_CLIP_S = 10.0  # longer clips gain little from sharing a window and are decoded alone
MIN_OVERLAP_S = 0.25  # a segment overlapping two clips by more than this each is ambiguous


@dataclass(frozen=True)
class Span:
    start: float  # seconds in the window
    end: float


@dataclass(frozen=True)
class TimedText:
    start: float
    end: float
    text: str


def plan_windows(durations: Sequence[float], packable: Sequence[bool]) -> list[list[int]]:
    """Indices grouped into windows, first fit in the given order; unpackable clips get a window each."""
    windows: list[list[int]] = []
    fill: list[float] = []
    for i, (d, ok) in enumerate(zip(durations, packable, strict=True)):
        if not ok or d > MAX_CLIP_S:
            windows.append([i])
            fill.append(WINDOW_S)  # closed
            continue
        for w, used in enumerate(fill):
            if used + GAP_S + d <= WINDOW_S:
                windows[w].append(i)
                fill[w] = used + GAP_S + d
                break
        else:
            windows.append([i])
            fill.append(d)
    return windows


def pack(clips: Sequence[np.ndarray]) -> tuple[np.ndarray, tuple[Span, ...]]:
    """The clips end to end with GAP_S of silence between them, and where each lies (seconds)."""
    gap = np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.float32)
    parts: list[np.ndarray] = []
    spans: list[Span] = []
    at = 0
    for n, clip in enumerate(clips):
        if n:
            parts.append(gap)
            at += len(gap)
        parts.append(clip.astype(np.float32, copy=False))
        spans.append(Span(at / SAMPLE_RATE, (at + len(clip)) / SAMPLE_RATE))
        at += len(clip)
    return np.concatenate(parts), tuple(spans)


def _overlap(seg: TimedText, span: Span) -> float:
    return max(0.0, min(seg.end, span.end) - max(seg.start, span.start))


def split(segments: Sequence[TimedText], spans: Sequence[Span]) -> list[list[TimedText]] | None:
    """Each clip's segments, times made relative to the clip; None when the assignment is not clear-cut."""
    out: list[list[TimedText]] = [[] for _ in spans]
    for seg in segments:
        overlaps = [_overlap(seg, s) for s in spans]
        if sum(o > MIN_OVERLAP_S for o in overlaps) > 1:
            return None  # straddles two clips
        best = int(np.argmax(overlaps))
        if overlaps[best] <= 0.0:
            return None  # in a gap: silence the model filled with words, or a timestamp off by a clip
        span = spans[best]
        out[best].append(TimedText(max(0.0, seg.start - span.start), min(span.end, seg.end) - span.start, seg.text))
    if any(not segs for segs in out):
        return None  # a clip lost its words (merged into a neighbour, or skipped): decode it alone
    return out
