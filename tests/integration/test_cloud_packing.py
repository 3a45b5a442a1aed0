"""`--pack` on the real tiny.en weights and real speech: short clips share a window, each still gets its own
words and segment times, and clips that must not be packed are decoded alone."""

from __future__ import annotations

import pytest

from cloud_service.asr.model import AsrModel, AsrRequest
from evaluation.scoring import word_errors, words
from shared import audio_files
from tests.audio_fixtures import data_prompts

pytestmark = [pytest.mark.slow]


def test_packed_clips_get_their_own_words(tiny_asr: AsrModel) -> None:
    packed = AsrModel(tiny_asr.model, tiny_asr.name, "cpu", False, beam_size=5, pack=True)
    prompts = data_prompts("en")
    audio = [audio_files.load_audio(p.wav) for p in prompts]
    items = [AsrRequest(x, "en") for x in audio]
    items.append(AsrRequest(audio[0], "en", word_timestamps=True))  # word alignment: never packed
    results = packed.transcribe_batch(items)
    assert packed.pack_stats.windows == 1 and packed.pack_stats.clips == len(prompts)
    for p, x, r in zip(prompts, audio, results, strict=False):
        ref = words(p.text, "en")
        assert word_errors(ref, words(r.text, "en")) <= len(ref) // 4, (p.text, r.text)
        assert r.segments and 0.0 <= r.segments[0].start < r.segments[-1].end <= len(x) / 16000 + 1e-6
        assert r.batch_size == len(items)
    assert results[-1].words  # the aligned one went alone and has its words
    assert words(results[-1].text, "en") == words(results[0].text, "en")


def test_a_refused_split_decodes_each_clip_again_alone(tiny_asr: AsrModel, monkeypatch: pytest.MonkeyPatch) -> None:
    import cloud_service.asr.model as model_module

    # The refusal itself is pure logic (tests/unit/test_packing.py); here every split is refused, so the model's
    # fallback path runs on real audio: each clip must come back with its own words.
    monkeypatch.setattr(model_module, "split", lambda segments, spans: None)
    packed = AsrModel(tiny_asr.model, tiny_asr.name, "cpu", False, beam_size=1, pack=True)
    prompts = data_prompts("en")
    results = packed.transcribe_batch([AsrRequest(audio_files.load_audio(p.wav), "en") for p in prompts])
    assert packed.pack_stats.redone == len(prompts) == packed.pack_stats.clips
    for p, r in zip(prompts, results, strict=True):
        ref = words(p.text, "en")
        assert word_errors(ref, words(r.text, "en")) <= len(ref) // 4, (p.text, r.text)
