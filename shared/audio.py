"""Audio DSP, pure: resampling, pad/trim and Whisper's log-mel spectrogram in numpy (soxr resamples).

The log-mel follows `whisper.audio.log_mel_spectrogram` step by step (periodic Hann window, centred STFT with
reflect padding, power spectrum without the last frame, mel filter bank, log10, an 8-decade floor below the
peak, then (x + 4) / 4), so an edge node computes the same features the model was trained on, without torch.
No torch, no files, no programs: decoding a file and reading the mel filter bank are `shared.audio_files`.
"""

from __future__ import annotations

import numpy as np

from shared.errors import UserError

SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30  # seconds: Whisper's window
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames per window
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100


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
    out: np.ndarray = ((log_spec + 4.0) / 4.0).astype(np.float32)
    return out
