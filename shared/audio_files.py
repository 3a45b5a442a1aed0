"""Audio files: decode a file to 16 kHz mono float32 (libsndfile, or ffmpeg for other formats) and read an
artifact's mel filter bank.

This is the one module in `shared` that runs a program (ffmpeg, through subprocess), and only for formats
libsndfile cannot read; the import contract in pyproject.toml allows exactly `shared.audio_files -> subprocess`.
The DSP itself (resampling, log-mel) is pure and lives in `shared.audio`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from shared.audio import N_FFT, SAMPLE_RATE, resample
from shared.errors import UserError

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
    out: np.ndarray = filters.astype(np.float32)
    return out
