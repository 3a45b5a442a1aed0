"""Speech segments from the artifact's Silero VAD (official silero_vad.onnx, v5/v6 interface).

The model takes 512-sample frames at 16 kHz with the previous frame's last 64 samples in front, a recurrent
state [2, batch, 128] and the sample rate; it returns a speech probability per frame. To keep the per-call
cost low on long audio, the audio is cut into independent streams run side by side as a batch (each stream
starts from a fresh state, which only blurs its first ~100 ms).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_node.engine.onnx_model import SessionConfig, open_session

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
FRAME = 512  # samples per VAD decision (32 ms)
CONTEXT = 64  # samples of the previous frame the v5/v6 model sees
STATE_SHAPE = (2, 128)
_IO = (["input", "state", "sr"], ["output", "stateN"])


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


class SileroVad:
    """One onnxruntime session on vad.onnx."""

    def __init__(self, path: Path, config: SessionConfig | None = None) -> None:
        # one thread: the model is tiny and runs frame by frame
        self._session: Any = open_session(path, config or SessionConfig(intra_op_threads=1), _IO)

    def frame_probs(self, audio: np.ndarray, stream_s: float = 4.0) -> np.ndarray:
        """Speech probability of every 512-sample frame of 16 kHz `audio`."""
        n_frames = -(-audio.size // FRAME)
        if n_frames == 0:
            return np.zeros(0, np.float32)
        per_stream = max(1, int(stream_s * SAMPLE_RATE) // FRAME)
        n_streams = -(-n_frames // per_stream)
        padded = np.zeros(n_streams * per_stream * FRAME, np.float32)
        padded[: audio.size] = audio
        streams = padded.reshape(n_streams, per_stream, FRAME)
        state = np.zeros((STATE_SHAPE[0], n_streams, STATE_SHAPE[1]), np.float32)
        context = np.zeros((n_streams, CONTEXT), np.float32)
        sr = np.array(SAMPLE_RATE, dtype=np.int64)
        probs = np.zeros((n_streams, per_stream), np.float32)
        for i in range(per_stream):
            x = np.concatenate([context, streams[:, i]], axis=1)
            out, state = self._session.run(None, {"input": x, "state": state, "sr": sr})
            probs[:, i] = out[:, 0]
            context = x[:, -CONTEXT:]
        return probs.reshape(-1)[:n_frames]

    def speech_segments(self, audio: np.ndarray, options: VadOptions = VadOptions()) -> list[SpeechSegment]:
        return segments_from_probs(
            self.frame_probs(audio, options.stream_s), audio.size / SAMPLE_RATE, options
        )


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
