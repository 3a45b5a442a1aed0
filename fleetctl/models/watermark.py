"""A keyed, per-fleet watermark in the int8 weights of an edge artifact (`fleetctl model build --watermark-key`,
`fleetctl model watermark verify`).

Scheme (keyed-parity-v1): HMAC-SHA256(key, tensor name) seeds a generator per int8 MatMul weight tensor, which
picks `BITS_PER_TENSOR` positions and a bit for each; the weight at each position gets that bit as its parity,
moving by one int8 step toward zero when it must change (never out of range). That is one quantization step on
about 0.01 % of tiny.en's int8 weights: far below the int8 rounding error already there.

Detection needs only the ONNX files and the key: the share of positions whose parity matches. Without the mark
(another key, or none) each position matches by chance with p = 1/2, so over N bits the share is 0.5 +- 0.5/sqrt(N);
the mark gives 1.0. `verify` calls it present above `THRESHOLD` (0.75: more than 20 standard deviations above
chance for tiny.en's N = 2080, so a false claim is practically impossible, and a copy whose weights were
perturbed a little still shows it). A re-quantized copy loses it: the watermark proves a copied artifact, not a
retrained model.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shared.errors import UserError

if TYPE_CHECKING:
    import onnx

SCHEME = "keyed-parity-v1"
BITS_PER_TENSOR = 32
MIN_TENSOR = 16 * 1024  # smaller int8 tensors are left alone
THRESHOLD = 0.75
MIN_KEY_BYTES = 16
PARTS = ("encoder.onnx", "decoder.onnx")


@dataclass(frozen=True)
class Detection:
    matched: int
    bits: int

    @property
    def share(self) -> float:
        return self.matched / self.bits if self.bits else 0.0

    @property
    def present(self) -> bool:
        return self.bits > 0 and self.share >= THRESHOLD

    @property
    def sigmas(self) -> float:
        """How far above chance (0.5) the share is, in standard deviations of chance."""
        return (self.share - 0.5) / (0.5 / math.sqrt(self.bits)) if self.bits else 0.0


def read_key(path: Path) -> bytes:
    from shared.fsutil import read_secret

    key = read_secret(path, "the watermark key file").encode()
    if len(key) < MIN_KEY_BYTES:
        raise UserError(f"the watermark key in {path} is shorter than {MIN_KEY_BYTES} bytes; make one with "
                        "`fleetctl model watermark init-key`")
    return key


def key_id(key: bytes) -> str:
    """A fingerprint naming the key in the manifest (the key itself stays with the operator)."""
    return hmac.new(key, b"whisper-fleet watermark key id", hashlib.sha256).hexdigest()[:16]


def _plan(key: bytes, name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    seed = hmac.new(key, f"{SCHEME}:{name}".encode(), hashlib.sha256).digest()
    rng = np.random.default_rng(int.from_bytes(seed[:16], "big"))
    positions = rng.choice(size, BITS_PER_TENSOR, replace=False)
    bits = rng.integers(0, 2, BITS_PER_TENSOR, dtype=np.int8)
    return positions, bits


def _weights(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The int8 weight tensors of the quantized MatMuls, in a fixed order."""
    import onnx

    return sorted((t for t in model.graph.initializer
                   if t.data_type == onnx.TensorProto.INT8 and t.name.endswith("_quantized")
                   and math.prod(t.dims) >= MIN_TENSOR), key=lambda t: t.name)


def _parity(values: np.ndarray) -> np.ndarray:
    return (values.astype(np.int16) & 1).astype(np.int8)


def embed(artifact: Path, key: bytes) -> int:
    """Watermark encoder.onnx and decoder.onnx in `artifact` in place (before the manifest is written); returns
    the number of bits embedded. UserError when the graphs hold no int8 weights (an fp32 build)."""
    import onnx
    from onnx import numpy_helper

    from fleetctl.models.quantize import save_model

    total = 0
    for part in PARTS:
        path = artifact / part
        model = onnx.load(str(path))
        for tensor in _weights(model):
            arr = numpy_helper.to_array(tensor).copy()
            flat = arr.reshape(-1)
            pos, bits = _plan(key, tensor.name, flat.size)
            values = flat[pos].astype(np.int16)
            change = _parity(values) != bits
            step = np.where(values > 0, -1, 1)  # toward zero: never past -128..127
            flat[pos] = np.where(change, values + step, values).astype(np.int8)
            tensor.CopyFrom(numpy_helper.from_array(arr, tensor.name))
            total += len(pos)
        save_model(model, path)
    if total == 0:
        raise UserError(f"{artifact} has no int8 weights to watermark (built with --no-quantize?)")
    return total


def detect(artifact: Path, key: bytes) -> Detection:
    import onnx
    from onnx import numpy_helper

    matched = bits_total = 0
    for part in PARTS:
        path = artifact / part
        if not path.is_file():
            raise UserError(f"{path} not found: not an edge artifact directory")
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # a damaged or foreign file: say so, no traceback
            raise UserError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from None
        for tensor in _weights(model):
            flat = numpy_helper.to_array(tensor).reshape(-1)
            pos, bits = _plan(key, tensor.name, flat.size)
            matched += int(np.sum(_parity(flat[pos]) == bits))
            bits_total += len(pos)
    return Detection(matched, bits_total)
