"""Whisper decoding in numpy: greedy or beam search over a KV-cached decoder, with openai-whisper's logit
rules.

Pure logic: the model comes in as anything with `decode(tokens, self_k, self_v, cross_k, cross_v)` returning
(logits of the last position, new_self_k, new_self_v, alignment); arrays in, frozen dataclasses out.
Rules copied in behaviour (not code) from openai-whisper's decoding.py: blank suppression at the first sampled
position, the default suppress list, timestamp pairing/monotonicity/initial-timestamp limits, and the
"timestamps win when their total probability beats every text token" rule.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from edge_node.core.tokenizer import Tokenizer
from shared.hotwords import BiasOptions, EncodedHotwords, HotwordBias
from shared.whisper_rules import COMPRESSION_RATIO_THRESHOLD, LOGPROB_THRESHOLD, NO_SPEECH_THRESHOLD

log = logging.getLogger(__name__)

TEMPERATURES: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
TIME_PRECISION = 0.02  # seconds per timestamp token (30 s / 1500 audio positions)


class DecoderModel(Protocol):
    def decode(
        self,
        tokens: np.ndarray,
        self_k: np.ndarray,
        self_v: np.ndarray,
        cross_k: np.ndarray,
        cross_v: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...

    def empty_cache(self, batch: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class DecodingOptions:
    temperature: float = 0.0
    sample_len: int = 224  # at most n_text_ctx // 2 new tokens
    beam_size: int | None = None  # None or 1: greedy
    patience: float = 1.0
    length_penalty: float | None = None  # None: rank by log-prob / length, as whisper
    without_timestamps: bool = False
    max_initial_timestamp: float = 1.0
    suppress_blank: bool = True
    suppress_non_speech: bool = True  # whisper's suppress_tokens="-1"
    prompt: tuple[int, ...] = ()  # previous text or hot words, fed after <|startofprev|>
    seed: int = 0  # for sampling at temperature > 0
    # Contextual biasing (shared/hotwords.py): boosts choices only; log-probs stay unbiased.
    hotwords: EncodedHotwords = field(default_factory=EncodedHotwords)
    bias: BiasOptions = field(default_factory=BiasOptions)


@dataclass(frozen=True)
class DecodingResult:
    tokens: tuple[int, ...]  # sampled tokens (text and timestamps), without <|endoftext|>
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float
    token_logprobs: tuple[float, ...] = field(default=(), repr=False)  # one per entry of `tokens`, then eot
    token_entropies: tuple[float, ...] = field(default=(), repr=False)


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    shifted = x - m
    return np.asarray(shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True)), dtype=np.float32)


def _entropy(logprobs: np.ndarray) -> np.ndarray:
    finite = np.isfinite(logprobs)
    safe = np.where(finite, logprobs, 0.0)
    return np.asarray(-np.sum(np.where(finite, np.exp(safe) * safe, 0.0), axis=-1))


class LogitRules:
    """The logit filters openai-whisper applies before each choice, on numpy rows."""

    def __init__(self, tokenizer: Tokenizer, options: DecodingOptions, sample_begin: int) -> None:
        self.tok = tokenizer
        self.options = options
        self.sample_begin = sample_begin
        self.blank = np.array([*tokenizer.encode(" "), tokenizer.eot])
        suppress = list(tokenizer.non_speech_tokens) if options.suppress_non_speech else []
        t = tokenizer
        suppress += [t.transcribe, t.translate, t.sot, t.sot_prev, t.sot_lm, t.no_speech]
        self.suppress = np.array(sorted(set(suppress)))
        self.max_initial_index = round(options.max_initial_timestamp / TIME_PRECISION)

    def apply(self, logits: np.ndarray, tokens: list[list[int]]) -> None:
        """Mask `logits` [rows, n_vocab] in place given each row's tokens so far."""
        n_sampled = len(tokens[0]) - self.sample_begin
        if self.options.suppress_blank and n_sampled == 0:
            logits[:, self.blank] = -np.inf
        logits[:, self.suppress] = -np.inf
        if not self.options.without_timestamps:
            self._timestamps(logits, tokens, n_sampled)

    def _timestamps(self, logits: np.ndarray, tokens: list[list[int]], n_sampled: int) -> None:
        ts_begin, eot = self.tok.timestamp_begin, self.tok.eot
        logits[:, self.tok.no_timestamps] = -np.inf
        for k, row in enumerate(tokens):
            seq = row[self.sample_begin :]
            last_ts = len(seq) >= 1 and seq[-1] >= ts_begin
            penultimate_ts = len(seq) < 2 or seq[-2] >= ts_begin
            if last_ts:
                if penultimate_ts:  # a pair just closed: text (or eot) must follow
                    logits[k, ts_begin:] = -np.inf
                else:  # an open segment ends with a timestamp or eot, never text
                    logits[k, :eot] = -np.inf
            stamps = [t for t in seq if t >= ts_begin]
            if stamps:
                # never go back in time, and give each segment a non-zero length
                last = stamps[-1] if (last_ts and not penultimate_ts) else stamps[-1] + 1
                logits[k, ts_begin:last] = -np.inf
        if n_sampled == 0:
            logits[:, :ts_begin] = -np.inf  # the first token is a timestamp ...
            logits[:, ts_begin + self.max_initial_index + 1 :] = -np.inf  # ... and an early one
        logprobs = log_softmax(logits)
        for k in range(logits.shape[0]):
            ts_mass = np.logaddexp.reduce(logprobs[k, ts_begin:])
            if ts_mass > np.max(logprobs[k, :ts_begin]):
                logits[k, :ts_begin] = -np.inf


@dataclass
class _Row:
    tokens: list[int]
    sum_logprob: float = 0.0
    logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    bias_score: float = 0.0  # hot-word bonus summed over the choices: ranks beams, never reported

    def extended(self, token: int, logprob: float, entropy: float, bonus: float = 0.0) -> _Row:
        return _Row(
            [*self.tokens, token],
            self.sum_logprob + logprob,
            [*self.logprobs, logprob],
            [*self.entropies, entropy],
            self.bias_score + bonus,
        )

    @property
    def score(self) -> float:
        return self.sum_logprob + self.bias_score


def _scores(
    logits: np.ndarray, tokens: list[list[int]], rules: LogitRules, bias: HotwordBias | None
) -> tuple[np.ndarray, np.ndarray]:
    """(unbiased log-probs after whisper's rules, log-probs to choose from). The first feeds avg_logprob,
    token log-probs and entropies (confidence, escalation, fallback); `logits` is left biased, for sampling."""
    rules.apply(logits, tokens)
    raw = log_softmax(logits)
    if bias is None:
        return raw, raw
    bias.apply(logits, tokens)
    return raw, log_softmax(logits)


def initial_tokens(
    tokenizer: Tokenizer, options: DecodingOptions, n_text_ctx: int = 448
) -> tuple[list[int], int]:
    """(prompt + start-of-transcript sequence, index of <|startoftranscript|> in it)."""
    prefix: list[int] = []
    if options.prompt:
        keep = n_text_ctx // 2 - 1
        prefix = [tokenizer.sot_prev, *list(options.prompt)[-keep:]]
    seq = (
        tokenizer.sot_sequence_including_notimestamps
        if options.without_timestamps
        else tokenizer.sot_sequence
    )
    return [*prefix, *seq], len(prefix)


def decode(
    model: DecoderModel,
    tokenizer: Tokenizer,
    cross_k: np.ndarray,
    cross_v: np.ndarray,
    options: DecodingOptions = DecodingOptions(),
) -> list[DecodingResult]:
    """Decode every audio item of the batch in cross_k/cross_v [n_layer, batch, ...] (batch on axis 1) once."""
    n_audio = cross_k.shape[1]
    beam = (
        options.beam_size if options.beam_size and options.beam_size > 1 and options.temperature == 0 else 1
    )
    init, sot_index = initial_tokens(tokenizer, options)
    sample_begin = len(init)
    rules = LogitRules(tokenizer, options, sample_begin)
    bias = HotwordBias(options.hotwords, sample_begin, tokenizer.eot, options.bias) if options.hotwords else None
    rng = np.random.default_rng(options.seed)

    # Logits for <|startoftranscript|> give the no-speech probability; the decoder only returns the last
    # position's logits, so the prefix up to it goes first and the rest of the start sequence after it.
    k, v = model.empty_cache(n_audio)
    first = np.array([init[: sot_index + 1]] * n_audio, dtype=np.int64)
    logits, k, v, _ = model.decode(first, k, v, cross_k, cross_v)
    no_speech = np.exp(log_softmax(logits)[:, tokenizer.no_speech])
    if len(init) > sot_index + 1:
        rest = np.array([init[sot_index + 1 :]] * n_audio, dtype=np.int64)
        logits, k, v, _ = model.decode(rest, k, v, cross_k, cross_v)

    if beam > 1:
        rows = _beam_search(model, tokenizer, rules, bias, options, logits, k, v, cross_k, cross_v, init, beam)
    else:
        rows = _greedy(model, tokenizer, rules, bias, options, logits, k, v, cross_k, cross_v, init, rng)

    results = []
    for i, row in enumerate(rows):
        sampled = row.tokens[sample_begin:]
        n_text = sampled.index(tokenizer.eot) if tokenizer.eot in sampled else len(sampled)
        sampled = sampled[:n_text]
        text = tokenizer.decode(sampled).strip()
        results.append(
            DecodingResult(
                tokens=tuple(sampled),
                text=text,
                avg_logprob=row.sum_logprob / (len(sampled) + 1),
                no_speech_prob=float(no_speech[i]),
                compression_ratio=compression_ratio(text),
                temperature=options.temperature,
                token_logprobs=tuple(row.logprobs[: n_text + 1]),
                token_entropies=tuple(row.entropies[: n_text + 1]),
            )
        )
    return results


def _greedy(
    model: DecoderModel,
    tokenizer: Tokenizer,
    rules: LogitRules,
    bias: HotwordBias | None,
    options: DecodingOptions,
    logits: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    cross_k: np.ndarray,
    cross_v: np.ndarray,
    init: list[int],
    rng: np.random.Generator,
) -> list[_Row]:
    eot = tokenizer.eot
    rows = [_Row(list(init)) for _ in range(cross_k.shape[1])]
    for _ in range(options.sample_len):
        logprobs, _ = _scores(logits, [r.tokens for r in rows], rules, bias)
        if options.temperature > 0:
            p = np.exp(log_softmax(logits / options.temperature).astype(np.float64))
            choice = [int(rng.choice(p.shape[1], p=pi / pi.sum())) for pi in p]
        else:
            choice = [int(i) for i in np.argmax(logits, axis=-1)]
        entropies = _entropy(logprobs)
        for i, r in enumerate(rows):
            if r.tokens[-1] == eot:  # finished rows keep emitting eot, at no cost
                r.tokens.append(eot)
                continue
            rows[i] = r.extended(choice[i], float(logprobs[i, choice[i]]), float(entropies[i]))
        if all(r.tokens[-1] == eot for r in rows):
            break
        step = np.array([[r.tokens[-1]] for r in rows], dtype=np.int64)
        logits, k, v, _ = model.decode(step, k, v, cross_k, cross_v)
    return rows


def _beam_search(
    model: DecoderModel,
    tokenizer: Tokenizer,
    rules: LogitRules,
    bias: HotwordBias | None,
    options: DecodingOptions,
    logits: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    cross_k: np.ndarray,
    cross_v: np.ndarray,
    init: list[int],
    beam: int,
) -> list[_Row]:
    """openai-whisper's beam search: keep `beam` live rows per audio, collect finished ones until
    round(beam * patience) are done, then rank by log-prob over length."""
    eot, n_audio = tokenizer.eot, cross_k.shape[1]
    max_candidates = max(1, round(beam * options.patience))
    cross_k, cross_v = np.repeat(cross_k, beam, axis=1), np.repeat(cross_v, beam, axis=1)
    k, v = np.repeat(k, beam, axis=1), np.repeat(v, beam, axis=1)
    logits = np.repeat(logits, beam, axis=0)
    live = [_Row(list(init)) for _ in range(n_audio * beam)]
    finished: list[dict[tuple[int, ...], _Row]] = [{} for _ in range(n_audio)]
    for step in range(options.sample_len):
        logprobs, chosen = _scores(logits, [r.tokens for r in live], rules, bias)
        entropies = _entropy(logprobs)
        next_rows: list[_Row] = []
        sources: list[int] = []
        for a in range(n_audio):
            candidates: dict[tuple[int, ...], tuple[_Row, int]] = {}
            # On the first step all beams are equal: expand only one, or the beam fills with duplicates.
            for j in range(1 if step == 0 else beam):
                idx = a * beam + j
                top = np.argpartition(-chosen[idx], beam + 1)[: beam + 1]
                for t in top:
                    lp, bonus = float(logprobs[idx, t]), float(chosen[idx, t] - logprobs[idx, t])
                    new = live[idx].extended(int(t), lp, float(entropies[idx]), bonus)
                    candidates[tuple(new.tokens)] = (new, idx)
            saved = 0
            for _seq, (row, idx) in sorted(candidates.items(), key=lambda kv: -kv[1][0].score):
                if row.tokens[-1] == eot:
                    if len(finished[a]) < max_candidates:
                        finished[a][tuple(row.tokens)] = row
                else:
                    next_rows.append(row)
                    sources.append(idx)
                    saved += 1
                    if saved == beam:
                        break
            while (
                saved < beam
            ):  # fewer live candidates than beams: pad with a copy (never chosen over a finish)
                next_rows.append(next_rows[-1] if saved else live[a * beam])
                sources.append(sources[-1] if saved else a * beam)
                saved += 1
        live = next_rows
        k, v = k[:, sources], v[:, sources]
        if all(len(f) >= max_candidates for f in finished) or step == options.sample_len - 1:
            break
        tokens = np.array([[r.tokens[-1]] for r in live], dtype=np.int64)
        logits, k, v, _ = model.decode(tokens, k, v, cross_k, cross_v)
    best: list[_Row] = []
    for a in range(n_audio):
        pool = dict(finished[a])
        if len(pool) < beam:
            for row in sorted(live[a * beam : (a + 1) * beam], key=lambda r: -r.score):
                pool.setdefault(
                    tuple(row.tokens),
                    _Row([*row.tokens, eot], row.sum_logprob, row.logprobs, row.entropies, row.bias_score),
                )
        sample_begin = rules.sample_begin
        best.append(
            max(pool.values(), key=lambda r: _rank_score(r, sample_begin, eot, options.length_penalty))
        )
    return best


def _rank_score(row: _Row, sample_begin: int, eot: int, length_penalty: float | None) -> float:
    sampled = row.tokens[sample_begin:]
    length = sampled.index(eot) if eot in sampled else len(sampled)
    penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
    return row.score / max(penalty, 1e-9)


def needs_fallback(result: DecodingResult) -> bool:
    """openai-whisper's rule for trying the next temperature (shared/whisper_rules.py's thresholds): the text is too
    repetitive or the model unsure on average, unless the window is probably silence."""
    too_repetitive = result.compression_ratio > COMPRESSION_RATIO_THRESHOLD
    unsure = result.avg_logprob < LOGPROB_THRESHOLD
    silence = result.no_speech_prob > NO_SPEECH_THRESHOLD and unsure
    return (too_repetitive or unsure) and not silence


def decode_with_fallback(
    model: DecoderModel,
    tokenizer: Tokenizer,
    cross_k: np.ndarray,
    cross_v: np.ndarray,
    options: DecodingOptions = DecodingOptions(),
    temperatures: tuple[float, ...] = TEMPERATURES,
    done: Callable[[DecodingResult], bool] | None = None,
) -> list[DecodingResult]:
    """Decode each item at the first temperature, retrying only the items that need it at the next ones.

    `done(result)` says an item needs no further temperature (default: not `needs_fallback`).
    """
    accept = done if done is not None else (lambda r: not needs_fallback(r))
    results: list[DecodingResult | None] = [None] * cross_k.shape[1]
    todo = list(range(cross_k.shape[1]))
    for n, t in enumerate(temperatures):
        opts = replace(options, temperature=t, beam_size=options.beam_size if t == 0 else None)
        idx = np.array(todo)
        out = decode(model, tokenizer, cross_k[:, idx], cross_v[:, idx], opts)
        last = n == len(temperatures) - 1
        still = []
        for i, r in zip(todo, out, strict=True):
            results[i] = r
            if not last and not accept(r):
                still.append(i)
        todo = still
        if not todo:
            break
    return [r for r in results if r is not None]
