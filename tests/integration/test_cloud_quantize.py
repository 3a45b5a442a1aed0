"""`--quantize int8` on the cloud: the real tiny.en weights, dynamic int8 Linear layers, real speech."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_service.asr.model import AsrModel, AsrRequest
from evaluation.scoring import word_errors, words
from shared import audio_files
from tests.audio_fixtures import data_prompts

pytestmark = [pytest.mark.slow]


def test_int8_model_quantizes_every_linear_and_still_transcribes(tiny_checkpoint: Path) -> None:
    import torch

    model = AsrModel.load(tiny_checkpoint, "cpu", beam_size=1, quantize="int8")
    assert model.version.endswith("-int8")
    linears = [m for m in model.model.modules() if isinstance(m, torch.nn.Linear)]
    dynamic = [m for m in model.model.modules() if type(m).__name__ == "Linear" and "quantized" in type(m).__module__]
    assert not linears and len(dynamic) == 4 * 6 + 4 * 10  # tiny.en: 4 encoder and 4 decoder blocks
    prompts = data_prompts("en")[:3]
    results = model.transcribe_batch([AsrRequest(audio_files.load_audio(p.wav), "en") for p in prompts])
    for p, r in zip(prompts, results, strict=True):
        ref = words(p.text, "en")
        assert word_errors(ref, words(r.text, "en")) <= len(ref) // 4, (p.text, r.text)


def test_int8_and_fp32_serve_side_by_side(tiny_asr: AsrModel, tiny_checkpoint: Path) -> None:
    # Quantizing one loaded model must not touch another (the swap works on its own module tree).
    AsrModel.load(tiny_checkpoint, "cpu", beam_size=1, quantize="int8")
    import torch

    assert any(isinstance(m, torch.nn.Linear) for m in tiny_asr.model.modules())
    assert not tiny_asr.version.endswith("-int8")
