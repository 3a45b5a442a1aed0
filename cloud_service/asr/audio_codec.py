"""Decode the wire audio (PCM16, FLAC, Ogg/Opus) into 16 kHz mono float32, refusing bad input clearly.

Pure: bytes in, samples out (ffmpeg is run only for Opus when libsndfile cannot read it).

Compressed audio is a decompression-bomb risk: 117 KB of FLAC can hold 300 s of 8-channel 48 kHz silence, 460 MB
once decoded. So nothing is decoded before its header has been checked (channels, rate, declared length), at most
`max_seconds` of frames are ever read, and ffmpeg is capped by output duration, output bytes and wall clock.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from enum import IntEnum
from typing import IO, Any

import numpy as np

from shared.audio import resample

SAMPLE_RATE = 16_000  # what Whisper expects
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 48_000
# The edge sends mono; stereo is mixed down. More channels only multiply what a decode costs.
MAX_CHANNELS = 2
FFMPEG_TIMEOUT_S = 20.0  # wall clock for one ffmpeg decode, however slow the machine
# ffmpeg is told to stop this far past the limit, so audio longer than the limit is told apart from audio at it.
FFMPEG_TAIL_S = 0.5
READ_BLOCK_S = 1.0  # libsndfile reads in blocks of this many seconds, stopping once past the limit
MAX_STDERR_BYTES = 64 * 1024
# libsndfile reports this many frames for a FLAC stream whose STREAMINFO leaves the length unknown (SF_COUNT_MAX).
_UNKNOWN_FRAMES = 2**62

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


def _too_long(seconds: float, max_seconds: float) -> AudioError:
    return AudioError(f"audio is {seconds:.1f} s long; the limit is {max_seconds:g} s per segment")


def _check_rate(rate: int, what: str = "sample rate") -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{what} {rate} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")


def _decode_pcm16(data: bytes, sample_rate: int, max_seconds: float) -> tuple[np.ndarray, int]:
    found = _container(data)
    if found is not None:
        raise AudioError(f"audio declared PCM16 but the data is a {found} file; set the matching encoding")
    if len(data) % 2:
        raise AudioError(f"PCM16 audio has an odd number of bytes ({len(data)}): truncated or not 16-bit")
    if len(data) // 2 > max_seconds * sample_rate:  # before converting: 16 MiB would be 32 MB of float32
        raise _too_long(len(data) / 2 / sample_rate, max_seconds)
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, sample_rate


def _read_bounded(f: Any, max_frames: int) -> np.ndarray:
    """Mono float32 of at most max_frames + 1 frames, read in blocks (a header that understates the length cannot
    make this read more)."""
    block = max(1, int(f.samplerate * READ_BLOCK_S))
    parts: list[np.ndarray] = []
    total = 0
    while total <= max_frames:
        chunk = f.read(min(block, max_frames + 1 - total), dtype="float32", always_2d=True)
        if not len(chunk):
            break
        parts.append(chunk.mean(axis=1, dtype=np.float32))
        total += len(chunk)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def _decode_soundfile(data: bytes, expected: str, max_seconds: float) -> tuple[np.ndarray, int]:
    """Check the stream's header (channels, rate, declared length), then read at most max_seconds of it."""
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
            if channels > MAX_CHANNELS:
                raise AudioError(f"{expected} audio has {channels} channels; at most {MAX_CHANNELS} are accepted")
            _check_rate(rate)
            if frames >= _UNKNOWN_FRAMES:
                raise AudioError(f"{expected} stream does not declare its length; encode it with a known length")
            if frames > max_seconds * rate:
                raise _too_long(frames / rate, max_seconds)
            samples = _read_bounded(f, int(max_seconds * rate))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"corrupt {expected} audio: {exc}") from None
    if samples.size > max_seconds * rate:  # the header understated the length
        raise AudioError(f"{expected} audio is longer than its header says and than the limit of {max_seconds:g} s")
    return samples, rate


def _feed(stdin: IO[bytes], data: bytes) -> None:
    # A process that was killed, or stopped reading, breaks the pipe: its exit status says why, not this thread.
    with contextlib.suppress(ValueError, OSError):
        try:
            stdin.write(data)
        finally:
            stdin.close()


def run_capped(cmd: list[str], data: bytes, *, max_bytes: int, timeout_s: float, what: str) -> tuple[int, bytes, bytes]:
    """Run `cmd` with `data` on stdin; (returncode, stdout, stderr). Unlike subprocess.run(capture_output=True), it
    kills the process and raises AudioError as soon as stdout passes `max_bytes` or the run passes `timeout_s`."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout_s, expire)
    stderr = bytearray()
    err_stream = proc.stderr
    threads = [threading.Thread(target=_feed, args=(proc.stdin, data), daemon=True),
               threading.Thread(target=lambda: stderr.extend(err_stream.read(MAX_STDERR_BYTES)), daemon=True)]
    out = bytearray()
    over = False
    timer.start()
    try:
        for t in threads:
            t.start()
        while chunk := os.read(proc.stdout.fileno(), 64 * 1024):
            if len(out) + len(chunk) > max_bytes:
                over = True
                break
            out += chunk
    finally:
        timer.cancel()
        if proc.poll() is None and (over or timed_out.is_set()):
            proc.kill()
        code = proc.wait()
        for t in threads:
            t.join(5)
        proc.stdout.close()
        err_stream.close()
    if timed_out.is_set():
        raise AudioError(f"{what} took longer than {timeout_s:g} s; refused")
    if over:
        raise AudioError(f"{what} produced more than {max_bytes} bytes; refused")
    return code, bytes(out), bytes(stderr)


@dataclass(frozen=True)
class _FfmpegInput:
    """How one kind of input goes through ffmpeg, and the words its errors use."""

    demux: tuple[str, ...]  # e.g. ("-f", "ogg"): the container is known, so no probing of other demuxers
    what: str  # "decoding Opus"
    missing: str  # the error when this server has no ffmpeg
    corrupt: str  # prefix of the error when ffmpeg fails
    too_long: str  # "Opus audio is longer than the limit of N s per segment"
    empty_is_corrupt: bool  # an upload ffmpeg found no audio stream in


_OPUS = _FfmpegInput(
    ("-f", "ogg"), "decoding Opus", "this server cannot decode Opus (no libsndfile Opus support and no ffmpeg)",
    "corrupt Opus audio", "Opus audio is longer than the limit of {max:g} s per segment", False,
)
_UPLOAD = _FfmpegInput(
    (), "decoding audio", "this server cannot decode this format (no ffmpeg); send WAV or FLAC",
    "cannot decode the uploaded audio", "audio is longer than the limit of {max:g} s per request", True,
)


def _decode_ffmpeg(data: bytes, max_seconds: float, kind: _FfmpegInput) -> tuple[np.ndarray, int]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioError(kind.missing)
    stop_s = max_seconds + FFMPEG_TAIL_S
    cmd = [
        ffmpeg, "-nostdin", "-v", "error", *kind.demux, "-i", "pipe:0",
        "-map", "0:a:0", "-t", f"{stop_s:.3f}",  # one audio stream, and no more than just past the limit of it
        "-f", "s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "pipe:1",
    ]  # fmt: skip
    # -t bounds the output already; the byte cap (one more second) holds even if it did not.
    max_bytes = int((stop_s + 1.0) * SAMPLE_RATE) * 2
    code, out, err = run_capped(cmd, data, max_bytes=max_bytes, timeout_s=FFMPEG_TIMEOUT_S, what=kind.what)
    if code != 0 or (kind.empty_is_corrupt and not out):
        default = "no audio stream" if kind.empty_is_corrupt else "unknown error"
        reason = err.decode(errors="replace").strip().splitlines()[-1:] or [default]
        raise AudioError(f"{kind.corrupt}: {reason[0]}")
    if len(out) // 2 > max_seconds * SAMPLE_RATE:
        raise AudioError(f"{kind.too_long.format(max=max_seconds)} (decoding stopped at {stop_s:g} s)")
    return np.frombuffer(out[: len(out) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0, SAMPLE_RATE


def _decode_ffmpeg_opus(data: bytes, max_seconds: float) -> tuple[np.ndarray, int]:
    return _decode_ffmpeg(data, max_seconds, _OPUS)


def _decode_opus(data: bytes, max_seconds: float) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if "OGG" in sf.available_formats() and "OPUS" in sf.available_subtypes("OGG"):
        return _decode_soundfile(data, "Ogg/Opus", max_seconds)
    return _decode_ffmpeg_opus(data, max_seconds)


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
        _check_rate(sample_rate, "PCM16 sample_rate")
        samples, rate = _decode_pcm16(data, sample_rate, max_seconds)
    else:
        want = "FLAC" if enc is Encoding.FLAC else "Ogg"
        found = _container(data)
        if found != want:
            what = f"a {found} file" if found else "not a recognised container"
            raise AudioError(f"audio declared {enc.name} but the data is {what}")
        if enc is Encoding.FLAC:
            samples, rate = _decode_soundfile(data, "FLAC", max_seconds)
        else:
            samples, rate = _decode_opus(data, max_seconds)
        if enc is Encoding.FLAC and sample_rate and sample_rate != rate:
            raise AudioError(f"declared sample_rate {sample_rate} Hz but the FLAC stream is {rate} Hz")
    if samples.size == 0:
        raise AudioError("audio holds no samples")
    if samples.size > max_seconds * rate:  # every decoder stops just past the limit; this is the last word
        raise _too_long(samples.size / rate, max_seconds)
    if not np.isfinite(samples).all():
        raise AudioError("audio holds non-finite samples")
    out = resample(samples, rate, SAMPLE_RATE)
    if out.size == 0:  # one 48 kHz sample resamples to none: nothing a model could be run on
        raise AudioError(f"audio is too short ({samples.size} samples at {rate} Hz)")
    return DecodedAudio(out, rate)


# Containers libsndfile reads itself; anything else an upload may be (MP3, WebM, M4A, Ogg/Opus without libsndfile
# support) goes through ffmpeg with the same caps as Opus.
_SOUNDFILE_CONTAINERS = {"WAV", "FLAC"}


def decode_upload(data: bytes, max_seconds: float) -> DecodedAudio:
    """Decode an uploaded file of any common container (REST API): WAV/FLAC by libsndfile, the rest by ffmpeg,
    both bounded as in `decode_audio`. Raises AudioError saying why."""
    if not data:
        raise AudioError("the uploaded file is empty (0 bytes)")
    found = _container(data)
    if found in _SOUNDFILE_CONTAINERS:
        samples, rate = _decode_soundfile(data, found or "", max_seconds)
    else:
        samples, rate = _decode_ffmpeg(data, max_seconds, _UPLOAD)
    if samples.size == 0:
        raise AudioError("audio holds no samples")
    if samples.size > max_seconds * rate:
        raise _too_long(samples.size / rate, max_seconds)
    if not np.isfinite(samples).all():
        raise AudioError("audio holds non-finite samples")
    out = resample(samples, rate, SAMPLE_RATE)
    if out.size == 0:
        raise AudioError(f"audio is too short ({samples.size} samples at {rate} Hz)")
    return DecodedAudio(out, rate)
