"""Speech segments from the artifact's Silero VAD (official silero_vad.onnx, v5/v6 interface).

The model takes 512-sample frames at 16 kHz with the previous frame's last 64 samples in front, a recurrent
state [2, batch, 128] and the sample rate; it returns a speech probability per frame. To keep the per-call
cost low on long audio, the audio is cut into independent streams run side by side as a batch (each stream
starts from a fresh state, which only blurs its first ~100 ms). The pure rules over the probabilities are
edge_node/core/vad_rules.py's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge_node.core.vad_rules import FRAME, SAMPLE_RATE, SpeechSegment, VadOptions, segments_from_probs
from edge_node.engine.onnx_model import SessionConfig, open_session

log = logging.getLogger(__name__)

CONTEXT = 64  # samples of the previous frame the v5/v6 model sees
STATE_SHAPE = (2, 128)
_IO = (["input", "state", "sr"], ["output", "stateN"])
DEFAULT_OPTIONS = VadOptions()


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

    def speech_segments(self, audio: np.ndarray, options: VadOptions = DEFAULT_OPTIONS) -> list[SpeechSegment]:
        return segments_from_probs(
            self.frame_probs(audio, options.stream_s), audio.size / SAMPLE_RATE, options
        )

