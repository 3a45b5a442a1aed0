"""Decode the wire audio (PCM16, FLAC, Ogg/Opus) into 16 kHz mono float32, refusing bad input clearly.

Pure: bytes in, samples out (ffmpeg is run only for Opus when libsndfile cannot read it).
"""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from shared.audio import resample

SAMPLE_RATE = 16_000  # what Whisper expects
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 48_000
FFMPEG_TIMEOUT_S = 20.0

# Container magic numbers, to name a mislabelled encoding instead of decoding noise.
_MAGIC = {b"fLaC": "FLAC", b"OggS": "Ogg", b"RIFF": "WAV", b"ID3": "MP3"}


class Encoding(IntEnum):
    """Mirrors asr.v1.Audio.Encoding (kept here so the core does not import the generated proto)."""

    UNSPECIFIED = 0
    PCM16 = 1
    FLAC = 2
    OPUS = 3


class AudioError(ValueError):
    """The audio cannot be used; the message says why (it becomes INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32 mono at SAMPLE_RATE, in [-1, 1]
    source_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def _container(data: bytes) -> str | None:
    for magic, name in _MAGIC.items():
        if data.startswith(magic):
            return name
    return None


def _decode_pcm16(data: bytes, sample_rate: int) -> tuple[np.ndarray, int]:
    found = _container(data)
    if found is not None:
        raise AudioError(f"audio declared PCM16 but the data is a {found} file; set the matching encoding")
    if len(data) % 2:
        raise AudioError(f"PCM16 audio has an odd number of bytes ({len(data)}): truncated or not 16-bit")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, sample_rate


def _decode_soundfile(data: bytes, expected: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"corrupt {expected} audio: {exc}") from None
    return samples.mean(axis=1), int(rate)


def _decode_ffmpeg_opus(data: bytes) -> tuple[np.ndarray, int]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioError("this server cannot decode Opus (no libsndfile Opus support and no ffmpeg)")
    cmd = [
        ffmpeg,
        "-nostdin",
        "-v",
        "error",
        "-i",
        "pipe:0",
        "-f",
        "s16le",
        "-ac",
        "1",
        "-ar",
        str(SAMPLE_RATE),
        "pipe:1",
    ]
    proc = subprocess.run(cmd, input=data, capture_output=True, timeout=FFMPEG_TIMEOUT_S)
    if proc.returncode != 0:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["unknown error"]
        raise AudioError(f"corrupt Opus audio: {reason[0]}")
    return np.frombuffer(proc.stdout, dtype="<i2").astype(np.float32) / 32768.0, SAMPLE_RATE


def _decode_opus(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if "OGG" in sf.available_formats() and "OPUS" in sf.available_subtypes("OGG"):
        return _decode_soundfile(data, "Ogg/Opus")
    return _decode_ffmpeg_opus(data)


def decode_audio(encoding: int, sample_rate: int, data: bytes, max_seconds: float) -> DecodedAudio:
    """Decode and resample one clip. Raises AudioError for empty, corrupt, mislabelled or over-long audio."""
    if not data:
        raise AudioError("audio is empty (0 bytes)")
    try:
        enc = Encoding(encoding)
    except ValueError:
        raise AudioError(f"unknown audio encoding {encoding}; use PCM16, FLAC or OPUS") from None
    if enc is Encoding.UNSPECIFIED:
        raise AudioError("audio encoding is unspecified; use PCM16, FLAC or OPUS")
    if enc is Encoding.PCM16:
        if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
            raise AudioError(
                f"PCM16 sample_rate {sample_rate} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz"
            )
        samples, rate = _decode_pcm16(data, sample_rate)
    else:
        want = "FLAC" if enc is Encoding.FLAC else "Ogg"
        found = _container(data)
        if found != want:
            what = f"a {found} file" if found else "not a recognised container"
            raise AudioError(f"audio declared {enc.name} but the data is {what}")
        samples, rate = _decode_soundfile(data, "FLAC") if enc is Encoding.FLAC else _decode_opus(data)
        if enc is Encoding.FLAC and sample_rate and sample_rate != rate:
            raise AudioError(f"declared sample_rate {sample_rate} Hz but the FLAC stream is {rate} Hz")
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise AudioError(f"sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")
    if samples.size == 0:
        raise AudioError("audio holds no samples")
    seconds = samples.size / rate
    if seconds > max_seconds:
        raise AudioError(f"audio is {seconds:.1f} s long; the limit is {max_seconds:g} s per segment")
    if not np.isfinite(samples).all():
        raise AudioError("audio holds non-finite samples")
    return DecodedAudio(resample(samples, rate, SAMPLE_RATE), rate)
