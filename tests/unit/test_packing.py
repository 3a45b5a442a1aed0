"""Packing short clips into shared windows (cloud_service/asr/packing.py): planning, layout and the split rule."""

from __future__ import annotations

import numpy as np

from cloud_service.asr.packing import GAP_S, MAX_CLIP_S, WINDOW_S, Span, TimedText, pack, plan_windows, split


def test_plan_fills_windows_first_fit_and_keeps_unpackable_clips_alone() -> None:
    durations = [3.0, 4.0, 12.0, 20.0, 2.0, 5.0]
    packable = [True, True, True, True, True, False]
    plan = plan_windows(durations, packable)
    assert [5] in plan and [2] in plan  # not packable; over MAX_CLIP_S
    assert MAX_CLIP_S < 12.0
    for w in plan:
        assert sum(durations[i] for i in w) + GAP_S * (len(w) - 1) <= WINDOW_S or len(w) == 1
    assert sorted(i for w in plan for i in w) == list(range(len(durations)))
    assert plan_windows([8.0] * 4, [True] * 4) == [[0, 1, 2], [3]]  # 8+1+8+1+8 = 26 <= 28; a 4th would not fit


def test_pack_lays_clips_end_to_end_with_silent_gaps() -> None:
    a, b = np.ones(16000, np.float32), np.full(8000, 0.5, np.float32)
    audio, spans = pack([a, b])
    assert len(audio) == 16000 + int(GAP_S * 16000) + 8000
    assert spans == (Span(0.0, 1.0), Span(1.0 + GAP_S, 1.5 + GAP_S))
    assert not audio[16000:16000 + int(GAP_S * 16000)].any()


def test_split_assigns_segments_by_time_and_refuses_unclear_cases() -> None:
    spans = (Span(0.0, 2.0), Span(3.0, 6.0))
    segs = [TimedText(0.0, 1.9, "one"), TimedText(3.1, 4.0, "two"), TimedText(4.0, 6.2, "three")]
    parts = split(segs, spans)
    assert parts is not None
    assert [[t.text for t in p] for p in parts] == [["one"], ["two", "three"]]
    times = [(round(t.start, 6), round(t.end, 6)) for p in parts for t in p]
    assert times == [(0.0, 1.9), (0.1, 1.0), (1.0, 3.0)]  # relative to each clip, clipped to its end
    assert split([TimedText(1.0, 4.0, "straddles")], spans) is None
    assert split([TimedText(0.0, 1.0, "a"), TimedText(2.2, 2.8, "in the gap"), TimedText(3.0, 5.0, "b")],
                 spans) is None
    assert split([TimedText(0.0, 1.0, "only the first")], spans) is None  # the second clip lost its words
