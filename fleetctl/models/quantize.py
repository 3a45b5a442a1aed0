"""int8 dynamic quantization of the exported graphs with onnxruntime's tools, plus the tied-embedding fix.

Whisper ties the token embedding to the output projection. After export the decoder holds it twice: an fp32
[V, D] table for the input Gather and the projection's [D, V] weight. onnxruntime quantizes the projection
(per output channel, symmetric int8); we then rewrite the embedding lookup to gather columns of that same int8
matrix and scale them, and drop the fp32 table: 80 MB less for tiny.en, one copy of the vocabulary.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 (weights int8 per channel, activations uint8 at run time) on MatMuls with constant weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        # Attention's activation x activation products stay fp32: quantizing them costs accuracy for no size.
        extra_options={"MatMulConstBOnly": True},
    )


def share_tied_embedding(path: Path) -> int:
    """Make the decoder's token lookup read the quantized projection weight. Returns bytes saved."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    gather = next(
        (n for n in graph.node if n.op_type == "Gather" and "token_embedding" in n.input[0] and n.input[0] in inits),
        None,
    )
    if gather is None:
        raise RuntimeError("decoder has no token-embedding Gather on an initializer")
    table = inits[gather.input[0]]
    vocab, width = table.dims
    # The projection: a MatMulInteger whose constant B is [D, V] int8 with per-column scales.
    proj = next(
        n for n in graph.node
        if n.op_type == "MatMulInteger" and n.input[1] in inits and list(inits[n.input[1]].dims) == [width, vocab]
    )
    w_q = proj.input[1]
    base = w_q[: -len("_quantized")]
    scale, zero = f"{base}_scale", f"{base}_zero_point"
    if scale not in inits or list(inits[scale].dims) != [vocab]:
        raise RuntimeError("projection is not quantized per channel; cannot share the embedding")
    if np.any(numpy_helper.to_array(inits[zero]) != 0):
        raise RuntimeError("projection quantization is not symmetric; cannot share the embedding")

    # Check that the int8 copy reproduces the table before trusting it.
    ref = numpy_helper.to_array(table).astype(np.float32)
    approx = (numpy_helper.to_array(inits[w_q]).astype(np.float32) * numpy_helper.to_array(inits[scale])).T
    err = float(np.abs(approx - ref).max() / (np.abs(ref).max() + 1e-12))
    if err > 0.01:
        raise RuntimeError(f"int8 projection differs from the embedding table by {err:.3%}")

    tokens, out = gather.input[1], gather.output[0]
    p = "/token_embedding_q/"
    new_nodes = [
        helper.make_node("Gather", [w_q, tokens], [p + "cols"], name=p + "GatherCols", axis=1),
        helper.make_node("Transpose", [p + "cols"], [p + "rows"], name=p + "Transpose", perm=[1, 2, 0]),
        helper.make_node("Cast", [p + "rows"], [p + "rows_f"], name=p + "Cast", to=onnx.TensorProto.FLOAT),
        helper.make_node("Gather", [scale, tokens], [p + "scale"], name=p + "GatherScale", axis=0),
        helper.make_node("Unsqueeze", [p + "scale", p + "axes"], [p + "scale3"], name=p + "Unsqueeze"),
        helper.make_node("Mul", [p + "rows_f", p + "scale3"], [out], name=p + "Mul"),
    ]
    graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), p + "axes"))
    idx = list(graph.node).index(gather)
    graph.node.remove(gather)
    for offset, node in enumerate(new_nodes):
        graph.node.insert(idx + offset, node)
    graph.initializer.remove(table)
    onnx.checker.check_model(model)
    save_model(model, path)
    return vocab * width * 4


def store_fp16(path: Path, names: list[str]) -> int:
    """Store the named fp32 initializers as fp16 with a Cast in front. onnxruntime folds the Cast when it loads
    the session, so inference still runs in fp32; only the file shrinks. Returns bytes saved."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    saved = 0
    for init in list(graph.initializer):
        if init.name not in names or init.data_type != onnx.TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(init)
        half = numpy_helper.from_array(arr.astype(np.float16), init.name + "_fp16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        graph.node.insert(0, helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT))
        saved += arr.size * 2
    onnx.checker.check_model(model)
    save_model(model, path)
    return saved


def initializer_names(path: Path, consumer_op: str | None = None, pattern: str | None = None) -> list[str]:
    """Initializers read as the weight (input 1) of `consumer_op` nodes, or whose name contains `pattern`."""
    import onnx

    graph = onnx.load(str(path)).graph
    names = {i.name for i in graph.initializer}
    found: set[str] = set()
    if consumer_op:
        found |= {n.input[1] for n in graph.node if n.op_type == consumer_op and len(n.input) > 1} & names
    if pattern:
        found |= {name for name in names if pattern in name}
    return sorted(found)


def save_model(model: object, path: Path) -> None:
    """Write the ONNX model to `path` atomically (a temporary sibling, then a rename), mode 0644."""
    import onnx

    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx")
    os.close(fd)
    onnx.save(model, tmp)  # type: ignore[arg-type]
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
