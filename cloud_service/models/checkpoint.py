"""Load an openai-whisper model from a checkpoint file, applying its stored alignment heads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import UserError

if TYPE_CHECKING:
    import whisper


def read_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint not found: {path} (run `fleetctl model fetch NAME`)") from None
    if not isinstance(ckpt, dict) or "dims" not in ckpt:
        raise UserError(f"{path} is not an openai-whisper checkpoint")
    return ckpt


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
