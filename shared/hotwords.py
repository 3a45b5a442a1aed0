"""Hot-words: contextual biasing of Whisper's decoding toward operator-given phrases (docs/hotwords.md).

Pure logic, one implementation for both sides: the edge's numpy decoder uses `HotwordBias.apply` directly, the
cloud's openai-whisper decode wraps `HotwordBias.targets` and `bounded_bonus` in a torch logit filter
(cloud_service/asr/hotwords.py); the MQTT schema and the REST API check phrases with `check_hotwords`.

Phrases become token sequences (with and without a leading space, in a few capitalisations) kept in two prefix
tries; `HotwordBias.apply(logits, tokens)` (an openai-whisper style logit filter) finds, per row,
the longest suffix of the sampled text that is a proper prefix of a phrase and adds a bonus to the logits of
the phrase's next tokens, so a phrase the model has started gets completed. Phrase starts get a smaller bonus.

Bounded so the rest of the text does not suffer: only tokens already within `window` nats of the row's best
token are boosted, by at most `continue_bonus` nats; at most MAX_PHRASES phrases of MAX_PHRASE_CHARS characters
and MAX_PHRASE_TOKENS tokens. The edge decoder keeps log-probs/entropies on the unbiased distribution, so the
confidence model and the escalation decision do not see the boost.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.whisper_rules import check_prompt_text

MAX_PHRASES = 100  # per transcription (config + per call): the trie and per-step work stay small
MAX_PHRASE_CHARS = 64
MAX_PHRASE_TOKENS = 16  # per variant; a longer phrase is refused, not cut


@dataclass(frozen=True)
class BiasOptions:
    start_bonus: float = 1.0  # nats added to a phrase's first token
    continue_bonus: float = 3.0  # nats added to the next token of a started phrase
    window: float = 6.0  # only tokens whose logit is within this many nats of the row's best are boosted


def check_hotwords(phrases: Iterable[str], what: str = "hotwords") -> tuple[str, ...]:
    """Stripped, de-duplicated phrases; ValueError naming the problem when they break a bound."""
    out: list[str] = []
    for p in phrases:
        if not isinstance(p, str):
            raise ValueError(f"{what}: each phrase must be a string")
        text = " ".join(p.split())
        if not text:
            continue
        if len(text) > MAX_PHRASE_CHARS:
            raise ValueError(f"{what}: phrase {text[:20]!r}... is over {MAX_PHRASE_CHARS} characters")
        check_prompt_text(text, what)
        if text not in out:
            out.append(text)
    if len(out) > MAX_PHRASES:
        raise ValueError(f"{what}: {len(out)} phrases, at most {MAX_PHRASES}")
    return tuple(out)


def variants(phrase: str) -> tuple[str, ...]:
    """The phrase as given, lower case, Title Case and first-letter capitalised (without a leading space)."""
    forms = [phrase, phrase.lower(), phrase.title(), phrase[:1].upper() + phrase[1:]]
    return tuple(dict.fromkeys(forms))


@dataclass(frozen=True)
class EncodedHotwords:
    """Token sequences of every variant: `spaced` may start anywhere a word starts (after a space token),
    `bare` (no leading space) only at the start of the text."""

    spaced: tuple[tuple[int, ...], ...] = ()
    bare: tuple[tuple[int, ...], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.spaced or self.bare)


def encode_hotwords(encode: Callable[[str], list[int]], phrases: Sequence[str]) -> EncodedHotwords:
    """Encode checked phrases with `encode` (Tokenizer.encode); ValueError for a phrase over the token bound."""
    spaced: list[tuple[int, ...]] = []
    bare: list[tuple[int, ...]] = []
    for phrase in check_hotwords(phrases):
        for form in variants(phrase):
            for seqs, text in ((spaced, " " + form), (bare, form)):
                toks = tuple(encode(text))
                if len(toks) > MAX_PHRASE_TOKENS:
                    raise ValueError(f"hotwords: phrase {phrase!r} is over {MAX_PHRASE_TOKENS} tokens")
                if toks and toks not in seqs:
                    seqs.append(toks)
    return EncodedHotwords(tuple(spaced), tuple(bare))


class Trie:
    """Prefix trie of token sequences: node -> {token: child}."""

    def __init__(self, sequences: Iterable[Sequence[int]]) -> None:
        self.root: dict[int, Any] = {}
        self.depth = 0
        for seq in sequences:
            node = self.root
            for t in seq:
                node = node.setdefault(int(t), {})
            self.depth = max(self.depth, len(seq))

    def node(self, prefix: Sequence[int]) -> dict[int, Any] | None:
        node: dict[int, Any] | None = self.root
        for t in prefix:
            node = node.get(int(t)) if node is not None else None
            if node is None:
                return None
        return node

    def starts(self) -> list[int]:
        return list(self.root)

    def continuation(self, text: Sequence[int], whole_only: bool = False) -> tuple[int, list[int]]:
        """(length of the longest suffix of `text` that is a proper, non-empty prefix of a phrase, the tokens
        that continue it); (0, []) when none. `whole_only`: the suffix must be all of `text`."""
        longest = min(len(text), self.depth - 1)
        if whole_only:
            lengths: Sequence[int] = [len(text)] if 0 < len(text) <= longest else []
        else:
            lengths = range(longest, 0, -1)
        for n in lengths:
            node = self.node(text[len(text) - n :])
            if node:
                return n, list(node)
        return 0, []


class HotwordBias:
    """Logit filter: after the decoder's rules, boost the next tokens of started phrases (and phrase starts)."""

    def __init__(
        self, encoded: EncodedHotwords, sample_begin: int, eot: int, options: BiasOptions = BiasOptions()
    ) -> None:
        self.spaced = Trie(encoded.spaced)
        self.bare = Trie(encoded.bare)
        self.sample_begin = sample_begin
        self.eot = eot  # tokens >= eot are special or timestamps: they end the text a phrase could match
        self.options = options

    def boosts(self, tokens: Sequence[int]) -> dict[int, float]:
        """{token: bonus} for one row, given its tokens so far (prompt and start sequence included)."""
        seq = list(tokens[self.sample_begin :])
        cut = max((i + 1 for i, t in enumerate(seq) if t >= self.eot), default=0)
        text = seq[cut:]  # text since the last timestamp
        out: dict[int, float] = {}
        o = self.options
        for t in self.spaced.starts() + (self.bare.starts() if not seq else []):
            out[t] = o.start_bonus
        n, nxt = self.spaced.continuation(text)
        # a bare (no leading space) variant only matches from the very start of the text
        m, nxt_bare = self.bare.continuation(text, whole_only=True) if cut == 0 else (0, [])
        if m > n:
            n, nxt = m, nxt_bare
        if n:
            for t in nxt:
                out[t] = o.continue_bonus
        return out

    def targets(self, tokens: Sequence[Sequence[int]]) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(row, token ids, bonuses) for every row that gets a boost; finished rows (ending in eot) get none."""
        out = []
        for k, row in enumerate(tokens):
            if row and row[-1] == self.eot:
                continue
            boost = self.boosts(row)
            if boost:
                ids = np.fromiter(boost, dtype=np.int64)
                out.append((k, ids, np.fromiter(boost.values(), dtype=np.float32)))
        return out

    def apply(self, logits: np.ndarray, tokens: list[list[int]]) -> None:
        """Add bonuses to `logits` [rows, n_vocab] in place (numpy rows; see `bounded_bonus`)."""
        for k, ids, bonus in self.targets(tokens):
            best = float(np.max(logits[k]))
            logits[k, ids] += bounded_bonus(logits[k, ids], best, bonus, self.options.window)


def bounded_bonus(values: np.ndarray, best: float, bonus: np.ndarray, window: float) -> np.ndarray:
    """The bonus to add to tokens whose logits are `values`: theirs where the token is within `window` of the
    row's `best`, else 0. A token far below the best (or masked to -inf by the rules) is left alone, so biasing
    only re-ranks tokens the model already finds plausible."""
    return np.where(np.asarray(values, dtype=np.float32) >= best - window, bonus, 0.0).astype(np.float32)


# The REST `prompt` read as hot-words (docs/hotwords.md): split on commas, semicolons and newlines; every piece
# must be a short phrase (1-PROMPT_PHRASE_WORDS words, not ending in . ! or ?), or the prompt is prose and gives
# no hot-words (it still goes to Whisper as its initial prompt).
PROMPT_PHRASE_WORDS = 4
_SPLIT = re.compile(r"[,;\n]+")
_SENTENCE = re.compile(r"[.!?]$")  # a piece that ends a sentence


def prompt_hotwords(prompt: str) -> tuple[str, ...]:
    """The phrases of a prompt that reads as a list of short phrases; () for prose or more than MAX_PHRASES."""
    pieces = [" ".join(p.split()) for p in _SPLIT.split(prompt)]
    pieces = [p for p in pieces if p]
    if not pieces or len(pieces) > MAX_PHRASES:
        return ()
    for p in pieces:
        if len(p.split()) > PROMPT_PHRASE_WORDS or len(p) > MAX_PHRASE_CHARS or _SENTENCE.search(p):
            return ()
    try:
        return check_hotwords(pieces, "prompt")
    except ValueError:
        return ()
