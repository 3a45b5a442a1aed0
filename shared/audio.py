"""Audio front end: decode a file to 16 kHz mono float32 and compute Whisper's log-mel spectrogram in numpy.

The log-mel follows `whisper.audio.log_mel_spectrogram` step by step (periodic Hann window, centred STFT with
reflect padding, power spectrum without the last frame, mel filter bank, log10, an 8-decade floor below the
peak,
then (x + 4) / 4), so an edge node computes the same features the model was trained on, without torch.
No torch; ffmpeg is used only for formats libsndfile cannot read.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np

from shared.errors import UserError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30  # seconds: Whisper's window
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames per window
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
# Above this an input is refused rather than decoded into memory (about 1.5 GB of float32 at 16 kHz).
MAX_DURATION_S = 6 * 3600.0
# libsndfile reads these itself; anything else goes through ffmpeg.
_SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au"}


def load_audio(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode `path` to mono float32 at `sr` Hz. Raise UserError naming the file when it cannot be used."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file")
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        audio, native_sr = _read_soundfile(path)
        audio = resample(audio, native_sr, sr)
    else:
        audio = _read_ffmpeg(path, sr)
    if audio.size == 0:
        raise UserError(f"{path}: no audio samples (empty or truncated file)")
    if not np.all(np.isfinite(audio)):
        raise UserError(f"{path}: audio contains NaN or infinite samples")
    return audio


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile

    try:
        info = soundfile.info(str(path))
        if info.frames / max(info.samplerate, 1) > MAX_DURATION_S:
            raise UserError(f"{path}: {info.frames / info.samplerate:.0f} s of audio is over the limit")
        data, native_sr = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.SoundFileError) as exc:  # LibsndfileError is a RuntimeError
        raise UserError(f"{path}: cannot decode audio ({_first_line(exc)})") from None
    return data.mean(axis=1, dtype=np.float32), int(native_sr)


def _read_ffmpeg(path: Path, sr: int) -> np.ndarray:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise UserError(f"{path}: format needs ffmpeg, which is not installed (use WAV, FLAC or OGG)")
    # ffmpeg resamples here itself (as openai-whisper's loader does): a second resampler would only add error.
    cmd = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-f", "f32le", "-ac", "1", "-ar", str(sr), "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise UserError(f"{path}: cannot decode audio ({_first_line(proc.stderr.decode(errors='replace'))})")
    return np.frombuffer(proc.stdout, dtype=np.float32).copy()


def _first_line(exc: object) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def resample(audio: np.ndarray, from_sr: int, to_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling with soxr (high quality); a no-op when the rates match."""
    if from_sr == to_sr:
        return np.ascontiguousarray(audio, dtype=np.float32)
    if from_sr <= 0:
        raise UserError(f"invalid sample rate {from_sr}")
    import soxr

    return np.asarray(soxr.resample(audio.astype(np.float32), from_sr, to_sr, quality="HQ"), dtype=np.float32)


def pad_or_trim(array: np.ndarray, length: int = N_SAMPLES, axis: int = -1) -> np.ndarray:
    """Zero-pad or cut `array` along `axis` to `length`, as whisper.audio.pad_or_trim does."""
    size = array.shape[axis]
    if size > length:
        return np.take(array, np.arange(length), axis=axis)
    if size < length:
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, length - size)
        return np.pad(array, widths)
    return array


def _hann_periodic(n: int) -> np.ndarray:
    # torch.hann_window(n) is periodic by default: the window of length n + 1 without its last point.
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


def log_mel_spectrogram(audio: np.ndarray, filters: np.ndarray, padding: int = 0) -> np.ndarray:
    """Whisper's log-mel: float32 [n_mels, len(audio + padding) // HOP_LENGTH].

    `filters` is the artifact's `mel_filters.npy` ([n_mels, N_FFT // 2 + 1]); `padding` appends that many zero
    samples first, as whisper does with padding=N_SAMPLES before cutting 30 s windows.
    """
    x = np.asarray(audio, dtype=np.float32)
    if padding > 0:
        x = np.pad(x, (0, padding))
    half = N_FFT // 2
    # torch.stft(center=True) pads by reflection; reflection needs more samples than the pad width.
    x = np.pad(x, (half, half), mode="reflect") if x.size > half else np.pad(x, (half, half))
    n_frames = 1 + (x.size - N_FFT) // HOP_LENGTH
    frames = np.lib.stride_tricks.as_strided(
        x, shape=(n_frames, N_FFT), strides=(x.strides[0] * HOP_LENGTH, x.strides[0]), writeable=False
    )
    spec = np.fft.rfft(frames * _hann_periodic(N_FFT), axis=-1)
    power = (spec.real**2 + spec.imag**2)[:-1].astype(np.float32)  # whisper drops the last frame
    mel = filters.astype(np.float32) @ power.T
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def load_mel_filters(path: str | Path) -> np.ndarray:
    """Load the artifact's mel filter bank, checking its shape."""
    path = Path(path)
    try:
        filters = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{path}: missing mel filters") from None
    except ValueError as exc:
        raise UserError(f"{path}: not a numpy array file ({exc})") from None
    if filters.ndim != 2 or filters.shape[1] != N_FFT // 2 + 1:
        raise UserError(
            f"{path}: mel filters have shape {filters.shape}, expected [n_mels, {N_FFT // 2 + 1}]"
        )
    return filters.astype(np.float32)
