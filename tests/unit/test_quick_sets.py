"""evaluation/quick_sets.py: the fixed A/B sets are the same on every run and scored like the rest."""

from __future__ import annotations

import numpy as np

from evaluation.quick_sets import english_conditions, text_wer
from tests.audio_fixtures import need_prompts


def test_conditions_are_seeded_and_noisy_copies_of_the_clean_prompts() -> None:
    need_prompts("en")
    a, b = english_conditions(2, seed=3), english_conditions(2, seed=3)
    (clean, refs), (noisy, refs2) = a["clean"], a["pink noise 10 dB"]
    assert refs == refs2 and len(clean) == len(noisy) == 2
    assert all(np.array_equal(x, y) for x, y in zip(noisy, b["pink noise 10 dB"][0], strict=True))
    assert not np.array_equal(clean[0], noisy[0]) and len(clean[0]) == len(noisy[0])


def test_text_wer_normalises_and_counts_at_corpus_level() -> None:
    assert text_wer(["Press one, please.", "That conference is full"], ["press 1 please", "that conference"]) == \
        2 / 7
    assert text_wer(["Hello there."], ["hello there"]) == 0.0
