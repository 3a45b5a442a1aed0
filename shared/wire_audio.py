"""Audio on the wire between edge and cloud: PCM16, FLAC (lossless, the default) or Ogg/Opus (lossy, ~4x smaller).

Encoding and decoding go through libsndfile (the `soundfile` package), which carries FLAC and Opus.
"""

from __future__ import annotations

import io
from enum import StrEnum

import numpy as np

from shared.errors import UserError

SAMPLE_RATE = 16000


class WireEncoding(StrEnum):
    PCM16 = "pcm16"
    FLAC = "flac"
    OPUS = "opus"


def encode(audio: np.ndarray, encoding: WireEncoding, sample_rate: int = SAMPLE_RATE) -> bytes:
    """float32 mono samples in [-1, 1] -> bytes in the chosen encoding."""
    import soundfile as sf

    if audio.ndim != 1:
        raise ValueError("encode expects mono audio")
    clipped = np.clip(audio, -1.0, 1.0)
    if encoding is WireEncoding.PCM16:
        return (clipped * 32767.0).astype("<i2").tobytes()
    buf = io.BytesIO()
    if encoding is WireEncoding.FLAC:
        sf.write(buf, clipped, sample_rate, format="FLAC", subtype="PCM_16")
    else:
        sf.write(buf, clipped, sample_rate, format="OGG", subtype="OPUS")
    return buf.getvalue()


def decode(data: bytes, encoding: WireEncoding, sample_rate: int) -> tuple[np.ndarray, int]:
    """bytes -> (float32 mono samples, sample rate). Raises UserError naming what is wrong."""
    import soundfile as sf

    if not data:
        raise UserError("audio is empty")
    if encoding is WireEncoding.PCM16:
        if len(data) % 2:
            raise UserError(f"PCM16 audio has an odd byte count ({len(data)})")
        if sample_rate <= 0:
            raise UserError("PCM16 audio needs a positive sample_rate")
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, sample_rate
    expected = "FLAC" if encoding is WireEncoding.FLAC else "OGG"
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            if f.format != expected:
                raise UserError(f"audio declared {encoding.value} but is {f.format}")
            samples = f.read(dtype="float32", always_2d=True)
            rate = int(f.samplerate)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise UserError(f"corrupt {encoding.value} audio: {exc}") from None
    return samples.mean(axis=1).astype(np.float32), rate
