"""Hot-words on the cloud: shared/hotwords.py's contextual biasing as an openai-whisper logit filter.

openai-whisper's DecodingTask applies each of its `logit_filters` (`apply(logits, tokens)`, torch tensors) to the
last position's logits before every choice; this one runs after whisper's own rules (blank and token suppression,
timestamp rules), as on the edge. The boosts come from the one pure implementation (tries, bounds, the window
rule); only the gather and the in-place add are torch. Unlike the edge decoder, openai-whisper's beam search
scores and reports log-probs from the filtered logits, so a biased result's avg_logprob includes the (bounded)
bonus of the hot-word tokens it chose.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.hotwords import BiasOptions, EncodedHotwords, HotwordBias, bounded_bonus, encode_hotwords

log = logging.getLogger(__name__)


class TorchHotwordBias:
    """The shared HotwordBias over torch logits [rows, n_vocab] and tokens [rows, length]."""

    def __init__(self, bias: HotwordBias) -> None:
        self.bias = bias

    def apply(self, logits: Any, tokens: Any) -> None:
        import torch

        for k, ids, bonus in self.bias.targets(tokens.tolist()):
            index = torch.from_numpy(ids).to(logits.device)
            values = logits[k, index].float().cpu().numpy()
            best = float(logits[k].max())
            add = bounded_bonus(values, best, bonus, self.bias.options.window)
            logits[k, index] += torch.from_numpy(add).to(device=logits.device, dtype=logits.dtype)


def add_hotword_filter(task: Any, phrases: tuple[str, ...], options: BiasOptions | None = None) -> Any:
    """Append a hot-word filter for `phrases` (checked on admission) to a DecodingTask; returns the task. A phrase
    over the token bound is left out (logged), never raised: it would fail every request of the batch."""
    kept: list[EncodedHotwords] = []
    for phrase in phrases:
        try:
            kept.append(encode_hotwords(task.tokenizer.encode, (phrase,)))
        except ValueError as exc:
            log.info("hot-word left out: %s", exc)
    encoded = EncodedHotwords(tuple(s for e in kept for s in e.spaced), tuple(b for e in kept for b in e.bare))
    if encoded:
        bias = HotwordBias(encoded, task.sample_begin, task.tokenizer.eot, options or BiasOptions())
        task.logit_filters.append(TorchHotwordBias(bias))
    return task
