"""Speech segments from per-frame speech probabilities: hysteresis, minimum lengths, padding. Pure: no I/O.

The probabilities come from the artifact's Silero VAD (edge_node/engine/vad.py runs it): one per 512-sample frame
of 16 kHz audio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000
FRAME = 512  # samples per VAD decision (32 ms)


@dataclass(frozen=True)
class VadOptions:
    threshold: float = 0.5  # speech starts at this probability ...
    neg_threshold: float = 0.35  # ... and ends below this one (hysteresis)
    min_speech_s: float = 0.25  # shorter bursts are dropped
    min_silence_s: float = 0.3  # shorter pauses do not end a segment
    pad_s: float = 0.2  # kept around each segment so word onsets are not clipped
    # Length of each independent stream run side by side: short streams mean few session calls (a 60 s file:
    # 0.6 s in one stream, 0.2 s in 4 s streams); each restart blurs only its first ~100 ms.
    stream_s: float = 4.0


@dataclass(frozen=True)
class SpeechSegment:
    start: float  # seconds
    end: float


def segments_from_probs(
    probs: np.ndarray, duration: float, options: VadOptions = VadOptions()
) -> list[SpeechSegment]:
    """Hysteresis over frame probabilities -> padded, merged speech segments in seconds (pure)."""
    step = FRAME / SAMPLE_RATE
    raw: list[tuple[float, float]] = []
    start: float | None = None
    silence_since: float | None = None
    for i, p in enumerate(probs):
        t = i * step
        if start is None:
            if p >= options.threshold:
                start, silence_since = t, None
            continue
        if p >= options.threshold:
            silence_since = None
        elif p < options.neg_threshold:
            silence_since = t if silence_since is None else silence_since
            if t + step - silence_since >= options.min_silence_s:
                raw.append((start, silence_since))
                start, silence_since = None, None
    if start is not None:
        raw.append((start, silence_since if silence_since is not None else len(probs) * step))
    merged: list[SpeechSegment] = []
    for s, e in raw:
        if e - s < options.min_speech_s:
            continue
        s, e = max(0.0, s - options.pad_s), min(duration, e + options.pad_s)
        if merged and s <= merged[-1].end:
            merged[-1] = SpeechSegment(merged[-1].start, max(e, merged[-1].end))
        else:
            merged.append(SpeechSegment(s, e))
    return merged
