"""Small fixed evaluation sets for A/B benches of one engine against a variant of itself (watermark, cloud
quantization, packing): English Asterisk prompts clean and in seeded pink noise, with a corpus-level WER."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evaluation import asterisk, degrade
from evaluation.scoring import word_errors, words
from shared import audio_files

NOISE_SNR_DB = 10.0


def english_conditions(n: int, seed: int) -> dict[str, tuple[list[np.ndarray], list[str]]]:
    """{condition: (16 kHz clips, reference texts)}: the first `n` English prompts (two words or more), clean
    and in pink noise at NOISE_SNR_DB (seeded, so every run hears the same noise)."""
    prompts = asterisk.prompts("en", min_words=2)[:n]
    clean = [audio_files.load_audio(p.wav) for p in prompts]
    rng = np.random.default_rng(seed)
    noisy = [degrade.limit_peak(degrade.mix_at_snr(x, degrade.pink_noise(len(x), rng), NOISE_SNR_DB))
             for x in clean]
    texts = [p.text for p in prompts]
    return {"clean": (clean, texts), f"pink noise {NOISE_SNR_DB:g} dB": (noisy, texts)}


def text_wer(refs: Sequence[str], hyps: Sequence[str], lang: str = "en") -> float:
    """Corpus WER of hypotheses against references, with the project's normaliser (evaluation.scoring.words)."""
    errors = sum(word_errors(words(r, lang), words(h, lang)) for r, h in zip(refs, hyps, strict=True))
    return errors / max(1, sum(len(words(r, lang)) for r in refs))
