"""The artifact's Whisper encoder and decoder on onnxruntime: one small class owns both sessions.

Shapes follow the artifact contract (docs/edge.md): the encoder maps mel [batch, n_mels, n_frames] to every
decoder layer's cross-attention keys/values; the decoder takes new tokens plus the self-attention KV cache and
returns the last position's logits, the grown cache and the alignment heads' cross-attention weights.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import UserError

log = logging.getLogger(__name__)

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
_ENCODER_IO = (["mel"], ["cross_k", "cross_v"])
_DECODER_OUTPUTS = ["logits", "new_self_k", "new_self_v", "alignment"]


def _decoder_io(n_layer: int) -> tuple[list[str], list[str]]:
    """One cross-attention input per layer, so a step reads the encoder's tensors in place (no per-token copy)."""
    cross = [f"cross_k_{i}" for i in range(n_layer)] + [f"cross_v_{i}" for i in range(n_layer)]
    return ["tokens", "self_k", "self_v", *cross], _DECODER_OUTPUTS


@dataclass(frozen=True)
class SessionConfig:
    """onnxruntime settings. intra_op_threads=0 lets onnxruntime pick (all physical cores)."""

    intra_op_threads: int = 0
    inter_op_threads: int = 1
    enable_cpu_mem_arena: bool = True
    log_severity: int = 3  # 0 verbose .. 4 fatal: keep onnxruntime's own chatter out of the CLI's stderr


@dataclass(frozen=True)
class Dims:
    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_layer: int


@dataclass(frozen=True)
class ArtifactInfo:
    directory: Path
    dims: Dims
    multilingual: bool
    alignment_heads: tuple[tuple[int, int], ...]
    name: str
    version: str


def read_artifact_info(directory: Path) -> ArtifactInfo:
    """Read the fields the engine needs from manifest.json (the signature is checked by the deployment
    path)."""
    path = directory / "manifest.json"
    try:
        doc = json.loads(path.read_text())
        d = doc["dims"]
        dims = Dims(**{k: int(d[k]) for k in Dims.__dataclass_fields__})
        heads = tuple((int(layer), int(head)) for layer, head in doc["alignment_heads"])
        return ArtifactInfo(
            directory, dims, bool(doc["multilingual"]), heads, str(doc["name"]), str(doc["version"])
        )
    except FileNotFoundError:
        raise UserError(
            f"{path}: missing (is {directory} a model artifact? build it with `make setup`)"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: malformed manifest ({exc})") from None


def _session_options(config: SessionConfig) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = config.intra_op_threads
    opts.inter_op_num_threads = config.inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_cpu_mem_arena = config.enable_cpu_mem_arena
    opts.log_severity_level = config.log_severity
    return opts


def open_session(path: Path, config: SessionConfig, io: tuple[list[str], list[str]] | None = None) -> Any:
    """An onnxruntime CPU session on `path`, its input/output names checked against `io`."""
    import onnxruntime as ort

    if not path.is_file():
        raise UserError(f"{path}: missing model file")
    try:
        sess = ort.InferenceSession(str(path), _session_options(config), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable graphs
        raise UserError(f"{path}: cannot load ONNX model ({str(exc).splitlines()[0]})") from None
    if io is not None:
        inputs = [i.name for i in sess.get_inputs()]
        outputs = [o.name for o in sess.get_outputs()]
        if inputs != io[0] or outputs != io[1]:
            raise UserError(
                f"{path}: I/O {inputs} -> {outputs} does not match the contract {io[0]} -> {io[1]}"
            )
    return sess


class WhisperOnnx:
    """The encoder and decoder sessions of one artifact."""

    def __init__(self, directory: Path, config: SessionConfig = SessionConfig()) -> None:
        self.info = read_artifact_info(directory)
        self.dims = self.info.dims
        self._encoder = open_session(directory / ENCODER_FILE, config, _ENCODER_IO)
        self._decoder = open_session(directory / DECODER_FILE, config, _decoder_io(self.dims.n_text_layer))

    def encode(self, mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """mel [batch, n_mels, n_frames] (n_frames even, <= 2 * n_audio_ctx) -> (cross_k [L, B, H, d, T],
        cross_v [L, B, H, T, d]): every layer's cross-attention keys (transposed) and values, per head."""
        if mel.ndim == 2:
            mel = mel[None]
        n_frames = mel.shape[-1]
        if n_frames % 2 or n_frames > 2 * self.dims.n_audio_ctx or mel.shape[1] != self.dims.n_mels:
            raise ValueError(
                f"mel shape {mel.shape} is not [batch, {self.dims.n_mels}, even n_frames <= 3000]"
            )
        k, v = self._encoder.run(None, {"mel": np.ascontiguousarray(mel, dtype=np.float32)})
        return k, v

    def empty_cache(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        shape = (self.dims.n_text_layer, batch, 0, self.dims.n_text_state)
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)

    def decode(
        self,
        tokens: np.ndarray,
        self_k: np.ndarray,
        self_v: np.ndarray,
        cross_k: np.ndarray,
        cross_v: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One decoder step -> (logits [batch, n_vocab] of the last position, new_self_k, new_self_v,
        alignment)."""
        feeds = {
            "tokens": np.ascontiguousarray(tokens, dtype=np.int64),
            "self_k": self_k,
            "self_v": self_v,
        }
        # cross_k[i] is a contiguous view of layer i: handed over without a copy.
        for i in range(cross_k.shape[0]):
            feeds[f"cross_k_{i}"] = cross_k[i]
            feeds[f"cross_v_{i}"] = cross_v[i]
        logits, new_k, new_v, alignment = self._decoder.run(None, feeds)
        return logits, new_k, new_v, alignment
