"""Pure signal degradations for the evaluation corpus: noise synthesis, mixing at an exact SNR, babble.

Everything here works on float32 mono arrays in [-1, 1] and takes an explicit `numpy.random.Generator`, so the
corpus is reproducible bit for bit. No I/O.

SNR convention: signal power is the mean square over the whole clip (the prompts carry little leading or
trailing silence), noise power likewise over the same span. `mix_at_snr` makes that ratio exact before any
peak scaling, and peak scaling multiplies speech and noise alike, so the ratio survives it.
"""

from __future__ import annotations

import numpy as np

# Peak level a mixture is scaled down to when it would clip on conversion to PCM16.
PEAK_LIMIT = 0.98
# Babble: how many other talkers (prompts) are summed into one babble track.
BABBLE_TALKERS = 4


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n).astype(np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Noise with a 1/f power spectrum (-3 dB per octave): white noise shaped in the frequency domain."""
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(spectrum.size, dtype=np.float64)
    freqs[0] = 1.0  # the DC bin is zeroed below; avoid a division by zero
    spectrum = spectrum / np.sqrt(freqs)
    spectrum[0] = 0.0
    pink = np.fft.irfft(spectrum, n)
    return (pink / (np.std(pink) + 1e-12)).astype(np.float32)


def power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Tile or trim `x` to exactly `n` samples."""
    if x.size == 0:
        raise ValueError("cannot fit an empty signal")
    if x.size < n:
        x = np.tile(x, -(-n // x.size))
    return x[:n]


def limit_peak(x: np.ndarray, peak: float = PEAK_LIMIT) -> np.ndarray:
    top = float(np.max(np.abs(x))) if x.size else 0.0
    if top > peak:
        x = x * (peak / top)
    return x.astype(np.float32)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + noise scaled so that power(speech) / power(noise) is exactly `snr_db`; peak-limited."""
    noise = fit_length(noise, speech.size).astype(np.float64)
    p_speech, p_noise = power(speech), power(noise)
    if p_speech == 0.0 or p_noise == 0.0:
        raise ValueError("speech and noise must both have non-zero power")
    gain = np.sqrt(p_speech / (p_noise * 10.0 ** (snr_db / 10.0)))
    return limit_peak(speech.astype(np.float64) + gain * noise)


def babble(n: int, talkers: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Sum of other talkers, each at equal power, looped and started at a random offset, `n` samples long."""
    if not talkers:
        raise ValueError("babble needs at least one talker")
    out = np.zeros(n, dtype=np.float64)
    for talker in talkers:
        looped = fit_length(talker, n + talker.size)
        start = int(rng.integers(0, talker.size))
        segment = looped[start : start + n].astype(np.float64)
        p = power(segment)
        if p > 0.0:
            out += segment / np.sqrt(p)
    return out.astype(np.float32)


def measured_snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """SNR of `noisy` against the `clean` signal it was made from, allowing an overall gain on the mixture.

    The gain is the least-squares projection of `noisy` on `clean`; what is left is the noise.
    """
    n = min(clean.size, noisy.size)
    c, y = clean[:n].astype(np.float64), noisy[:n].astype(np.float64)
    gain = float(np.dot(y, c) / np.dot(c, c))
    residual = y - gain * c
    return float(10.0 * np.log10(np.sum((gain * c) ** 2) / np.sum(residual**2)))


def to_pcm16(x: np.ndarray) -> np.ndarray:
    pcm: np.ndarray = np.round(np.clip(x, -1.0, 32767 / 32768) * 32768.0).astype(np.int16)
    return pcm


def from_pcm16(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) / 32768.0).astype(np.float32)
