"""Audio for tests on either side: Asterisk prompts (checked in, or installed) and wire-audio messages built from them.

Unit tests use `data_prompts`: a few prompts copied into tests/data/asterisk (see its README for the licence), so they
need no apt package. Integration tests may use the installed packages (`need_prompts`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf

from evaluation import asterisk
from proto.asr.v1 import asr_pb2
from tests.prereq import require

DATA = Path(__file__).resolve().parent / "data" / "asterisk"


def data_prompts(lang: str = "en") -> list[asterisk.Prompt]:
    """The checked-in prompts of `lang`, sorted by id, with their transcripts (tests/data/asterisk/transcripts.txt)."""
    found = []
    for line in (DATA / "transcripts.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith(";") or ":" not in line:
            continue
        name, text = (part.strip() for part in line.split(":", 1))
        prompt_lang, prompt_id = name.split("/", 1)
        if prompt_lang == lang:
            found.append(asterisk.Prompt(prompt_id, lang, text, DATA / lang / f"{prompt_id}.wav"))
    return sorted(found, key=lambda p: p.id)


def need_prompts(lang: str) -> list[asterisk.Prompt]:
    require(asterisk.available(lang), f"Asterisk {lang} prompts are not installed")
    return asterisk.prompts(lang, min_words=4)


def pcm16_audio(wav: Path) -> asr_pb2.Audio:
    samples, rate = sf.read(wav, dtype="int16")
    if samples.ndim > 1:
        samples = samples[:, 0]
    return asr_pb2.Audio(encoding=asr_pb2.Audio.PCM16, sample_rate=rate, data=samples.astype("<i2").tobytes())


def encoded_audio(wav: Path, fmt: str, subtype: str, encoding: int) -> asr_pb2.Audio:
    samples, rate = sf.read(wav, dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return asr_pb2.Audio(encoding=encoding, sample_rate=rate, data=buf.getvalue())


def silence_pcm16(seconds: float, rate: int = 16_000) -> asr_pb2.Audio:
    data = np.zeros(int(seconds * rate), dtype="<i2").tobytes()
    return asr_pb2.Audio(encoding=asr_pb2.Audio.PCM16, sample_rate=rate, data=data)
