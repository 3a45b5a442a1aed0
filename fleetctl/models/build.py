"""`fleetctl model build`: checkpoint -> self-contained, signed edge artifact directory.

Steps: export fp32 ONNX -> int8 dynamic quantization -> share the tied embedding -> add the tokenizer, mel filters
and Silero VAD -> manifest.json with every file's sha256 -> manifest.sig. Everything is written into a temporary
sibling directory that replaces the target only at the end, so a failed build leaves no half-written artifact.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetctl.models.pinned_wheels import WheelPart, download_wheel, read_member
from shared.errors import UserError
from shared.manifest import Manifest, write_manifest

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# Silero VAD v6, the 16 kHz-only opset-15 graph: half the size of the dual-rate one, and the edge is 16 kHz only.
SILERO_VAD = WheelPart(
    "silero-vad",
    "6.2.3",
    "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
    "silero_vad/data/silero_vad_16k_op15.onnx",
)


@dataclass(frozen=True)
class BuildOptions:
    quantize: bool = True
    opset: int = 17
    vad: bool = True
    version: str | None = None  # default: a UTC timestamp
    watermark_key: bytes | None = field(default=None, repr=False)  # set: embed the fleet's watermark (watermark.py)


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out.parent}: {exc.strerror}") from None
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"cannot write to {out.parent}: permission denied")


def _replace_dir(tmp: Path, out: Path) -> None:
    old = out.with_name(f".{out.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)


def build_edge_artifact(
    checkpoint: Path, out: Path, key: Ed25519PrivateKey, opts: BuildOptions = BuildOptions()
) -> Manifest:
    import whisper
    from tqdm import tqdm

    from cloud_service.asr.checkpoint import load_whisper, read_checkpoint
    from fleetctl.models.export_onnx import export_onnx

    _prepare_out(out)
    ckpt = read_checkpoint(checkpoint)
    model_name = str(ckpt.get("name") or checkpoint.stem)
    heads = [(int(a), int(b)) for a, b in ckpt.get("alignment_heads") or []]
    if not heads:
        raise UserError(f"{checkpoint} has no alignment heads; re-fetch it with `fleetctl model fetch`")
    dims: dict[str, int] = dict(ckpt["dims"])
    del ckpt
    steps = ["load checkpoint", "export ONNX", "quantize int8", "assets", "sign"]
    assets = Path(whisper.__file__).parent / "assets"
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.build-"))
    tmp.chmod(0o755)
    try:
        with tqdm(total=len(steps), desc="build", unit="step") as bar:
            bar.set_postfix_str(steps[0])
            model = load_whisper(checkpoint)
            bar.update()
            bar.set_postfix_str(steps[1])
            fp32 = tmp / "fp32"
            fp32.mkdir()
            export_onnx(model, heads, fp32, opset=opts.opset)
            del model
            bar.update()
            bar.set_postfix_str(steps[2])
            quant = _quantize(fp32, tmp, opts.quantize)
            shutil.rmtree(fp32)
            if opts.watermark_key is not None:
                quant["watermark"] = _watermark(tmp, opts.watermark_key)
            bar.update()
            bar.set_postfix_str(steps[3])
            _copy_assets(assets, tmp, dims, opts.vad)
            bar.update()
            bar.set_postfix_str(steps[4])
            meta = _metadata(out.name, model_name, checkpoint, dims, heads, quant, opts)
            manifest = write_manifest(tmp, meta, key)
            bar.update()
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("built %s in %.1f s: %.1f MB", out, time.time() - t0, manifest.total_bytes / 1e6)
    return manifest


def _quantize(fp32: Path, tmp: Path, quantize: bool) -> dict[str, Any]:
    """encoder.onnx and decoder.onnx into `tmp`: int8 (or fp32 as exported); returns the manifest's description."""
    from fleetctl.models.quantize import initializer_names, quantize_int8, share_tied_embedding, store_fp16

    if not quantize:
        for part in ("encoder", "decoder"):
            (fp32 / f"{part}.onnx").rename(tmp / f"{part}.onnx")
        return {"method": "none", "weights": "float32"}
    for part in ("encoder", "decoder"):
        quantize_int8(fp32 / f"{part}.onnx", tmp / f"{part}.onnx")
    saved = share_tied_embedding(tmp / "decoder.onnx")
    # Conv kernels and learned positions are not quantized; fp16 storage halves them at no accuracy cost.
    enc, dec = tmp / "encoder.onnx", tmp / "decoder.onnx"
    store_fp16(enc, initializer_names(enc, consumer_op="Conv"))
    store_fp16(dec, initializer_names(dec, pattern="positional_embedding"))
    return {
        "method": "onnxruntime quantize_dynamic",
        "weights": "int8 symmetric, per output channel",
        "activations": "uint8, dynamic per tensor",
        "ops": ["MatMul (constant weights only)"],
        "tied_embedding": f"token lookup gathers the int8 projection weight ({saved / 1e6:.0f} MB saved)",
        "fp16_storage": ["encoder conv kernels", "decoder positional embedding"],
    }


def _watermark(tmp: Path, key: bytes) -> dict[str, Any]:
    from fleetctl.models.watermark import SCHEME, embed, key_id

    bits = embed(tmp, key)
    return {"scheme": SCHEME, "key_id": key_id(key), "bits": bits}


def _copy_assets(assets: Path, tmp: Path, dims: dict[str, int], vad: bool) -> None:
    """The tokenizer, the mel filterbank and (optionally) the Silero VAD graph."""
    import numpy as np

    tok_name = "multilingual.tiktoken" if _multilingual(dims) else "gpt2.tiktoken"
    shutil.copyfile(assets / tok_name, tmp / "tokenizer.tiktoken")
    with np.load(assets / "mel_filters.npz") as f:
        np.save(tmp / "mel_filters.npy", f[f"mel_{dims['n_mels']}"].astype(np.float32))
    if vad:
        with tempfile.TemporaryDirectory(prefix="vad-wheel-") as wd:
            wheel = download_wheel(SILERO_VAD, Path(wd))
            (tmp / "vad.onnx").write_bytes(read_member(wheel, SILERO_VAD.member))


def _multilingual(dims: dict[str, int]) -> bool:
    return dims["n_vocab"] >= 51865


def _metadata(name: str, model_name: str, checkpoint: Path, dims: dict[str, int], heads: list[tuple[int, int]],
              quant: dict[str, Any], opts: BuildOptions) -> dict[str, Any]:
    from fleetctl.models.export_onnx import DECODER_OUTPUTS, ENCODER_INPUTS, ENCODER_OUTPUTS, decoder_inputs

    return {
        "name": name,
        "model": model_name,
        "version": opts.version or time.strftime("%Y%m%d.%H%M%S", time.gmtime()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "dims": dims,
        "multilingual": _multilingual(dims),
        "alignment_heads": [list(h) for h in heads],
        "sample_rate": SAMPLE_RATE,
        "quantization": quant,
        "onnx": {
            "opset": opts.opset,
            "layout": "cross_k [L,B,H,d,T] cross_v [L,B,H,T,d]; decoder takes one cross input per layer",
            "encoder": {"inputs": ENCODER_INPUTS, "outputs": ENCODER_OUTPUTS},
            "decoder": {"inputs": decoder_inputs(dims["n_text_layer"]), "outputs": DECODER_OUTPUTS},
        },
        "vad": {"file": "vad.onnx", "source": f"{SILERO_VAD.package}=={SILERO_VAD.version}"} if opts.vad else None,
    }
