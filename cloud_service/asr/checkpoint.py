"""Load an openai-whisper model from a checkpoint file, applying its stored alignment heads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from shared.errors import UserError

if TYPE_CHECKING:
    import whisper


def load_checkpoint_dict(source: str | BinaryIO, what: str) -> dict[str, Any]:
    """torch.load a checkpoint (weights only: no pickled code runs) and check it is openai-whisper's shape."""
    import pickle
    import zipfile

    import torch

    try:
        ckpt = torch.load(source, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"{what} is not a readable PyTorch checkpoint: {str(exc).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise UserError(f"{what} is not an openai-whisper checkpoint (needs 'dims' and 'model_state_dict')")
    return ckpt


def read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (run `fleetctl model fetch NAME`)")
    return load_checkpoint_dict(str(path), str(path))


def load_whisper(path: Path, device: str = "cpu") -> whisper.Whisper:
    """Like `whisper.load_model(path)`, plus the checkpoint's alignment heads (needed for word timestamps)."""
    import torch
    from whisper.model import ModelDimensions, Whisper

    ckpt = read_checkpoint(path)
    model = Whisper(ModelDimensions(**ckpt["dims"]))
    model.load_state_dict(ckpt["model_state_dict"], strict=True)
    heads = ckpt.get("alignment_heads") or []
    if heads:
        dims = ckpt["dims"]
        mask = torch.zeros(dims["n_text_layer"], dims["n_text_head"], dtype=torch.bool)
        for layer, head in heads:
            mask[layer, head] = True
        model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    return model.to(device)


def checkpoint_name(path: Path) -> str:
    return str(read_checkpoint(path).get("name") or path.stem)
