"""`edge-node transcribe --timestamps` on real speech: one window split into segments at Whisper's timestamp tokens."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from edge_node.engine.config import EdgeConfig
from edge_node.engine.transcriber import EdgeTranscriber
from shared import audio
from shared.audio_files import load_audio
from tests.audio_fixtures import data_prompts


def test_timestamps_split_two_sentences_at_the_pause_between_them(edge_artifact: Path) -> None:
    prompts = {p.id: p for p in data_prompts("en")}
    first = load_audio(prompts["cannot-complete-as-dialed"].wav)  # 2.64 s
    second = load_audio(prompts["tt-weasels"].wav)  # 2.95 s
    pause_s = 1.0
    second_starts = (first.size / audio.SAMPLE_RATE) + pause_s
    clip = np.concatenate([first, np.zeros(int(pause_s * audio.SAMPLE_RATE), np.float32), second])

    plain = EdgeTranscriber(EdgeConfig(model_dir=edge_artifact, threads=1))
    (one,) = plain.transcribe(clip).segments  # the VAD packs both sentences into one window
    assert "completed as dialed" in one.text.lower() and "phone system" in one.text.lower()

    stamped = plain.with_config(replace(plain.config, timestamps=True))
    result = stamped.transcribe(clip)
    assert len(result.segments) == 2, [s.text for s in result.segments]
    a, b = result.segments
    assert "completed as dialed" in a.text.lower() and "phone system" not in a.text.lower()
    assert "phone system" in b.text.lower() and "dialed" not in b.text.lower()
    assert a.start == 0.0 < a.end <= b.start < b.end
    assert first.size / audio.SAMPLE_RATE - 0.3 < a.end < second_starts + 0.3  # the boundary is in the pause
    assert (a.audio_start, a.audio_end) == (a.start, a.end)  # a segment's audio is its own span, not the window
    assert all(w.start >= second_starts - 0.3 for w in b.words) and b.words  # word timings follow the speech
    assert all(a.start <= w.start and w.end <= a.end + 0.5 for w in a.words) and a.words
