"""Read CTranslate2 `model.bin` files (binary version 6) and map Whisper ones to openai-whisper's state dict.

Pure: bytes in, numpy arrays out. The format is documented in ../shared/notes/whisper-weights.md.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from shared.errors import UserError

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: None}  # 5 = bf16


@dataclass(frozen=True)
class CT2Model:
    spec_name: str
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]

    def get(self, name: str) -> np.ndarray:
        return self.variables[self.aliases.get(name, name)]


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise UserError(f"CTranslate2 model truncated: wanted {n} bytes, got {len(data)}")
    return data


def _u(f: BinaryIO, fmt: str) -> int:
    size = struct.calcsize(fmt)
    return int(struct.unpack("<" + fmt, _read_exact(f, size))[0])


def _string(f: BinaryIO) -> str:
    n = _u(f, "H")
    return _read_exact(f, n).rstrip(b"\0").decode()


def read_ct2(f: BinaryIO) -> CT2Model:
    version = _u(f, "I")
    if version != 6:
        raise UserError(f"unsupported CTranslate2 model.bin version {version} (expected 6)")
    spec = _string(f)
    _u(f, "I")  # spec revision
    n_vars = _u(f, "I")
    if n_vars > 100_000:
        raise UserError(f"corrupt CTranslate2 model: {n_vars} variables")
    variables: dict[str, np.ndarray] = {}
    for _ in range(n_vars):
        name = _string(f)
        rank = _u(f, "B")
        dims = tuple(_u(f, "I") for _ in range(rank))
        dtype_id = _u(f, "B")
        n_bytes = _u(f, "I")
        raw = _read_exact(f, n_bytes)
        dtype = _DTYPES.get(dtype_id)
        if dtype is None:
            if dtype_id != 5:
                raise UserError(f"corrupt CTranslate2 model: unknown dtype {dtype_id} for {name}")
            as_u16 = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            arr = as_u16.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=dtype)
        expected = int(np.prod(dims)) if dims else 1
        if arr.size != expected:
            raise UserError(f"corrupt CTranslate2 model: {name} has {arr.size} values, shape {dims}")
        variables[name] = arr.reshape(dims)
    aliases: dict[str, str] = {}
    n_alias = _u(f, "I")
    for _ in range(n_alias):
        alias = _string(f)
        aliases[alias] = _string(f)
    return CT2Model(spec, variables, aliases)


def whisper_state_dict(m: CT2Model) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Map a CTranslate2 WhisperSpec to openai-whisper's (model_state_dict, dims)."""
    if m.spec_name != "WhisperSpec":
        raise UserError(f"not a Whisper model: spec {m.spec_name!r}")
    sd: dict[str, np.ndarray] = {}

    def put(dst: str, src: str) -> None:
        sd[dst] = m.get(src)

    for conv in ("conv1", "conv2"):
        put(f"encoder.{conv}.weight", f"encoder/{conv}/weight")
        put(f"encoder.{conv}.bias", f"encoder/{conv}/bias")
    put("encoder.positional_embedding", "encoder/position_encodings/encodings")
    put("decoder.positional_embedding", "decoder/position_encodings/encodings")
    put("encoder.ln_post.weight", "encoder/layer_norm/gamma")
    put("encoder.ln_post.bias", "encoder/layer_norm/beta")
    put("decoder.ln.weight", "decoder/layer_norm/gamma")
    put("decoder.ln.bias", "decoder/layer_norm/beta")
    put("decoder.token_embedding.weight", "decoder/embeddings/weight")

    def layers(side: str) -> int:
        n = 0
        while f"{side}/layer_{n}/ffn/linear_0/weight" in m.variables:
            n += 1
        return n

    def linear(dst: str, src: str, bias: bool = True) -> None:
        sd[f"{dst}.weight"] = m.get(f"{src}/weight")
        if bias:
            sd[f"{dst}.bias"] = m.get(f"{src}/bias")

    def ln(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = m.get(f"{src}/gamma")
        sd[f"{dst}.bias"] = m.get(f"{src}/beta")

    def split_attn(prefix: str, src: str, names: tuple[str, ...]) -> None:
        w, b = m.get(f"{src}/weight"), m.get(f"{src}/bias")
        parts = len(names)
        for i, name in enumerate(names):
            d = w.shape[0] // parts
            sd[f"{prefix}.{name}.weight"] = w[i * d : (i + 1) * d]
            if name != "key":  # Whisper's key projection has no bias; CTranslate2 stores zeros
                sd[f"{prefix}.{name}.bias"] = b[i * d : (i + 1) * d]

    n_enc, n_dec = layers("encoder"), layers("decoder")
    for side, n in (("encoder", n_enc), ("decoder", n_dec)):
        for i in range(n):
            src, dst = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            split_attn(f"{dst}.attn", f"{src}/self_attention/linear_0", ("query", "key", "value"))
            linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
            ln(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
            linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
            linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")
            ln(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
            if side == "decoder":
                linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
                split_attn(f"{dst}.cross_attn", f"{src}/attention/linear_1", ("key", "value"))
                linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
                ln(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")

    emb = sd["decoder.token_embedding.weight"]
    dims = {
        "n_mels": int(sd["encoder.conv1.weight"].shape[1]),
        "n_audio_ctx": int(sd["encoder.positional_embedding"].shape[0]),
        "n_audio_state": int(sd["encoder.positional_embedding"].shape[1]),
        "n_audio_head": int(m.get("encoder/num_heads").reshape(-1)[0]),
        "n_audio_layer": n_enc,
        "n_vocab": int(emb.shape[0]),
        "n_text_ctx": int(sd["decoder.positional_embedding"].shape[0]),
        "n_text_state": int(emb.shape[1]),
        "n_text_head": int(m.get("decoder/num_heads").reshape(-1)[0]),
        "n_text_layer": n_dec,
    }
    return sd, dims
