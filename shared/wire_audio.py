"""Audio on the wire between edge and cloud: PCM16, FLAC (lossless, the default) or Ogg/Opus (lossy, ~4x smaller).

Encoding goes through libsndfile (the `soundfile` package), which carries FLAC and Opus. The receiving side's
checks live with it: cloud_service/asr/audio_codec.py.
"""

from __future__ import annotations

import io
from enum import StrEnum

import numpy as np

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
        pcm: bytes = (clipped * 32767.0).astype("<i2").tobytes()
        return pcm
    buf = io.BytesIO()
    if encoding is WireEncoding.FLAC:
        sf.write(buf, clipped, sample_rate, format="FLAC", subtype="PCM_16")
    else:
        sf.write(buf, clipped, sample_rate, format="OGG", subtype="OPUS")
    return buf.getvalue()

