"""Export openai-whisper to the edge's ONNX contract: an encoder that also emits every decoder layer's
cross-attention keys/values, and a decoder step that takes and returns the self-attention KV cache.

Contract (see README "Edge artifact"), with H heads of size d = D / H:
- encoder.onnx: mel [B, n_mels, T] -> cross_k [L, B, H, d, T/2] (keys pre-transposed), cross_v [L, B, H, T/2, d]
- decoder.onnx: tokens [B, N], self_k, self_v [L, B, P, D], cross_k_0..cross_k_{L-1} [B, H, d, T/2],
  cross_v_0..cross_v_{L-1} [B, H, T/2, d]
  -> logits [B, V] (last position only), new_self_k, new_self_v [L, B, P+N, D], alignment [B, H_a, N, T/2]

The cross-attention keys and values are laid out per head, keys transposed, once per segment by the encoder,
and reach the decoder as one input per layer: a decoder step then reads them in place, with no per-token slicing
or transposing of the 1500-frame tensors (which was two thirds of a step's time).

The attention is written out here (not whisper's modules) so the cache, the mask offset and the alignment-head
weights are explicit in the graph.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    import whisper

log = logging.getLogger(__name__)

ENCODER_INPUTS = ["mel"]
ENCODER_OUTPUTS = ["cross_k", "cross_v"]


def decoder_inputs(n_layer: int) -> list[str]:
    return ["tokens", "self_k", "self_v"] + [f"cross_k_{i}" for i in range(n_layer)] + [
        f"cross_v_{i}" for i in range(n_layer)
    ]


DECODER_OUTPUTS = ["logits", "new_self_k", "new_self_v", "alignment"]
_NEG = -1e9  # finite "minus infinity": keeps softmax free of NaN when a row is fully masked


def _modules(model: whisper.Whisper, heads: list[tuple[int, int]]) -> tuple[torch.nn.Module, torch.nn.Module]:
    import torch
    import torch.nn.functional as F
    from torch import Tensor, nn

    def attend(q: Tensor, k: Tensor, v: Tensor, n_head: int, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        b, n, d = q.shape
        hd = d // n_head
        q = q.view(b, n, n_head, hd).permute(0, 2, 1, 3)
        k = k.view(b, k.shape[1], n_head, hd).permute(0, 2, 3, 1)
        v = v.view(b, v.shape[1], n_head, hd).permute(0, 2, 1, 3)
        qk = (q @ k) * (hd**-0.5)
        if mask is not None:
            qk = qk + mask
        w = torch.softmax(qk.float(), dim=-1)
        out = (w @ v).permute(0, 2, 1, 3).reshape(b, n, d)
        return out, w

    def attend_by_head(q: Tensor, k: Tensor, v: Tensor, n_head: int) -> Tensor:
        """Self-attention one head at a time: a 30 s window's [T, T] score matrix exists for one head at a time
        (9 MB for T = 1500) instead of all heads at once (54 MB for tiny, twice over with the softmax): the edge's
        peak memory, at the same arithmetic."""
        hd = q.shape[-1] // n_head
        outs = []
        for i in range(n_head):
            sl = slice(i * hd, (i + 1) * hd)
            w = torch.softmax((q[:, :, sl] @ k[:, :, sl].transpose(1, 2)) * (hd**-0.5), dim=-1)
            outs.append(w @ v[:, :, sl])
        return torch.cat(outs, dim=-1)

    def attend_cross(q: Tensor, k_t: Tensor, v: Tensor, n_head: int) -> tuple[Tensor, Tensor]:
        """Cross-attention on the encoder's per-head layout: k_t [b, H, d, T], v [b, H, T, d]."""
        b, n, dm = q.shape
        hd = dm // n_head
        q = q.view(b, n, n_head, hd).permute(0, 2, 1, 3)
        w = torch.softmax(((q @ k_t) * (hd**-0.5)).float(), dim=-1)
        return (w @ v).permute(0, 2, 1, 3).reshape(b, n, dm), w

    def _sinusoids(length: Any, channels: int) -> Tensor:
        inc = math.log(10000) / (channels // 2 - 1)
        inv = torch.exp(-inc * torch.arange(channels // 2, dtype=torch.float32))
        t = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
        return torch.cat([torch.sin(t), torch.cos(t)], dim=1)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = model.encoder
            self.cross = nn.ModuleList([blk.cross_attn for blk in model.decoder.blocks])
            self.n_head = model.dims.n_audio_head
            self.n_text_head = model.dims.n_text_head
            # Whisper's encoder positions are fixed sinusoids: computing them in the graph for the actual length
            # saves storing a [1500, D] table (2.3 MB for tiny) and serves any n_frames.
            pe = model.encoder.positional_embedding
            self.sinusoidal = bool((pe - _sinusoids(pe.shape[0], pe.shape[1])).abs().max() < 1e-2)

        def forward(self, mel: Tensor) -> tuple[Tensor, Tensor]:
            e = self.enc
            x = F.gelu(e.conv1(mel))
            x = F.gelu(e.conv2(x)).permute(0, 2, 1)
            x = x + (_sinusoids(x.shape[1], x.shape[2]) if self.sinusoidal else e.positional_embedding[: x.shape[1]])
            for blk in e.blocks:
                h = blk.attn_ln(x)
                o = attend_by_head(blk.attn.query(h), blk.attn.key(h), blk.attn.value(h), self.n_head)
                x = x + blk.attn.out(o)
                x = x + blk.mlp(blk.mlp_ln(x))
            x = e.ln_post(x)
            b, t, d = x.shape
            hd = d // self.n_text_head
            ks = [c.key(x).view(b, t, self.n_text_head, hd).permute(0, 2, 3, 1) for c in self.cross]  # type: ignore[operator]
            vs = [c.value(x).view(b, t, self.n_text_head, hd).permute(0, 2, 1, 3) for c in self.cross]  # type: ignore[operator]
            return torch.stack(ks), torch.stack(vs)

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dec = model.decoder
            self.n_head = model.dims.n_text_head
            self.heads = heads

        def forward(self, tokens: Tensor, self_k: Tensor, self_v: Tensor, *cross: Tensor) -> tuple[Tensor, ...]:
            d = self.dec
            n_layer = len(d.blocks)
            cross_k, cross_v = cross[:n_layer], cross[n_layer:]
            n_past = self_k.shape[2]
            n = tokens.shape[1]
            x = d.token_embedding(tokens) + d.positional_embedding[n_past : n_past + n]
            q_pos = torch.arange(n, device=tokens.device) + n_past
            k_pos = torch.arange(n_past + n, device=tokens.device)
            mask = torch.where(k_pos[None, :] > q_pos[:, None], _NEG, 0.0)
            new_k, new_v, aligns = [], [], []
            for i, blk in enumerate(d.blocks):
                h = blk.attn_ln(x)
                k = torch.cat([self_k[i], blk.attn.key(h)], dim=1)
                v = torch.cat([self_v[i], blk.attn.value(h)], dim=1)
                new_k.append(k)
                new_v.append(v)
                o, _ = attend(blk.attn.query(h), k, v, self.n_head, mask)
                x = x + blk.attn.out(o)
                h = blk.cross_attn_ln(x)
                o, w = attend_cross(blk.cross_attn.query(h), cross_k[i], cross_v[i], self.n_head)
                x = x + blk.cross_attn.out(o)
                x = x + blk.mlp(blk.mlp_ln(x))
                layer_heads = [hd for (layer, hd) in self.heads if layer == i]
                if layer_heads:
                    aligns.append(w[:, layer_heads])
            x = d.ln(x[:, -1])
            logits = x @ d.token_embedding.weight.T
            return logits.float(), torch.stack(new_k), torch.stack(new_v), torch.cat(aligns, dim=1)

    return Encoder().eval(), Decoder().eval()


def export_onnx(model: whisper.Whisper, heads: list[tuple[int, int]], out_dir: Path, opset: int = 17) -> None:
    """Write encoder.onnx and decoder.onnx (fp32) into out_dir."""
    import warnings

    import torch

    model = model.float().eval()
    dims = model.dims
    encoder, decoder = _modules(model, heads)
    n_frames = 2 * dims.n_audio_ctx
    mel = torch.zeros(1, dims.n_mels, n_frames)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            encoder,
            (mel,),
            str(out_dir / "encoder.onnx"),
            input_names=ENCODER_INPUTS,
            output_names=ENCODER_OUTPUTS,
            dynamic_axes={"mel": {0: "batch", 2: "n_frames"}, "cross_k": {1: "batch", 4: "n_audio"},
                          "cross_v": {1: "batch", 3: "n_audio"}},
            opset_version=opset,
            dynamo=False,
        )
        ck, cv = encoder(mel[:, :, :200])
        L, D = dims.n_text_layer, dims.n_text_state
        tokens = torch.tensor([[50257, 50362]], dtype=torch.long)
        past = torch.zeros(L, 1, 3, D)
        names = decoder_inputs(L)
        cross_axes = {n: ({0: "batch", 3: "n_audio"} if n.startswith("cross_k") else {0: "batch", 2: "n_audio"})
                      for n in names[3:]}
        torch.onnx.export(
            decoder,
            (tokens, past, past, *ck.unbind(0), *cv.unbind(0)),
            str(out_dir / "decoder.onnx"),
            input_names=names,
            output_names=DECODER_OUTPUTS,
            dynamic_axes={
                "tokens": {0: "batch", 1: "n_tokens"},
                "self_k": {1: "batch", 2: "n_past"},
                "self_v": {1: "batch", 2: "n_past"},
                **cross_axes,
                "logits": {0: "batch"},
                "new_self_k": {1: "batch", 2: "n_total"},
                "new_self_v": {1: "batch", 2: "n_total"},
                "alignment": {0: "batch", 2: "n_tokens", 3: "n_audio"},
            },
            opset_version=opset,
            dynamo=False,
        )
