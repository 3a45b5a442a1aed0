"""`--quantize int8`: PyTorch dynamic quantization of the cloud model's Linear layers, for CPU serving.

Weights int8 per tensor, activations quantized on the fly per batch (torch.ao.quantization.quantize_dynamic);
convolutions, layer norms, the token embedding and the logit projection (`x @ embedding.T`, not a Linear) stay fp32.
openai-whisper's Linear is a subclass that casts its weight to the input's dtype; quantize_dynamic swaps only
exact nn.Linear modules, so each is first replaced by a plain nn.Linear holding the same parameters.
CPU only: PyTorch's quantized kernels (fbgemm/qnnpack) have no CUDA implementation; on a GPU fp16 is the path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import whisper

QUANTIZE_CHOICES = ("none", "int8")


def plain_linears(model: whisper.Whisper) -> int:
    """Replace every Linear subclass in `model` by an nn.Linear sharing its parameters; returns how many."""
    import torch.nn as nn

    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and type(child) is not nn.Linear:
                plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                  device=child.weight.device, dtype=child.weight.dtype)
                plain.weight = child.weight
                plain.bias = child.bias
                setattr(module, name, plain)
                swapped += 1
    return swapped


def quantize_int8(model: whisper.Whisper) -> whisper.Whisper:
    """The model with int8 dynamic-quantized Linear layers (in place; returned for chaining)."""
    import warnings

    import torch
    import torch.nn as nn

    plain_linears(model)
    with warnings.catch_warnings():
        # torch.ao.quantization warns that it moves to torchao; torch 2.13 (pinned) still ships and runs it, and
        # torchao is not a dependency. Revisit when the pin moves.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        quantized: whisper.Whisper = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8,
                                                                            inplace=True)
    return quantized
