"""Hot-word biasing on real decodes (docs/hotwords.md): the edge's ONNX decoder and the cloud's openai-whisper
filter, on installed Asterisk prompt recordings with real weights (tiny.en int8 artifact, base)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from cloud_service.asr.model import AsrModel, AsrRequest
from evaluation import asterisk
from shared import audio_files
from tests.edge_fixtures import edge_engine
from tests.integration.cloud_fixtures import base_asr
from tests.prereq import require

__all__ = ["base_asr", "edge_engine"]  # fixtures used by name

pytestmark = pytest.mark.slow

DISTRACTORS = ("Kitchen lights", "Home Assistant", "Sarah Connor")


def _prompt(name: str) -> Any:
    wav = asterisk.SOUNDS / asterisk.LANG_DIRS["en"] / f"{name}.wav"
    require(wav.exists(), f"Asterisk prompt {name} is not installed")
    return audio_files.load_audio(wav)


def test_cloud_filter_biases_only_with_hotwords(base_asr: AsrModel) -> None:
    """base (beam 5) hears "Followed by the town key."; the hot-word "pound key" gives the right words, phrases
    that are not said change nothing, and one batch holding both kinds of request decodes each its own way."""
    samples = _prompt("astcc-followed-by-the-pound-key")
    plain, unsaid, hot = base_asr.transcribe_batch([
        AsrRequest(samples, "en"),
        AsrRequest(samples, "en", hotwords=DISTRACTORS),
        AsrRequest(samples, "en", hotwords=("pound key", *DISTRACTORS)),
    ])
    assert "town key" in plain.text.lower() and "pound key" not in plain.text.lower(), plain.text
    assert unsaid.text == plain.text
    assert "pound key" in hot.text.lower(), hot.text
    assert hot.text.lower().startswith("followed by the")


def test_cloud_task_has_no_filter_without_hotwords(base_asr: AsrModel) -> None:
    from whisper.decoding import DecodingOptions

    from cloud_service.asr.batch_decoding import batched_task
    from cloud_service.asr.hotwords import TorchHotwordBias

    opts = DecodingOptions(language="en", fp16=False, beam_size=5)
    assert not any(isinstance(f, TorchHotwordBias) for f in batched_task(base_asr.model, opts).logit_filters)
    # a phrase over the token bound is left out, not raised: it would fail the whole batch
    task = batched_task(base_asr.model, opts, ("x " * 30, "pound key"))
    [bias] = [f for f in task.logit_filters if isinstance(f, TorchHotwordBias)]
    assert bias.bias.spaced.depth <= 16 and bias.bias.spaced.starts()


def test_edge_hotword_completes_a_misheard_word(edge_engine: Any) -> None:
    """tiny.en int8 hears conf-noempty as "No empty conference is currently exist."; with "conferences" among
    distractors it writes the word as said, and distractors are not inserted."""
    samples = _prompt("conf-noempty")
    cfg = replace(edge_engine.config, word_timestamps=False, temperatures=(0.0,))
    engine = edge_engine.with_config(cfg)
    plain = engine.transcribe(samples).text
    hot = engine.transcribe(samples, hotwords=("conferences", *DISTRACTORS)).text
    assert "conferences" not in plain.lower(), plain
    assert "conferences" in hot.lower() and "exist" in hot.lower(), hot
    assert not any(d.lower() in hot.lower() for d in DISTRACTORS)
    # configured hot-words work the same, and a phrase over the token bound is refused when the config is applied
    assert engine.with_config(replace(cfg, hotwords=("conferences",))).transcribe(samples).text == hot
    with pytest.raises(ValueError, match="tokens"):
        engine.with_config(replace(cfg, hotwords=("x " * 30,)))
