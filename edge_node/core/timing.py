"""Word timestamps from the decoder's alignment-head cross-attention, by dynamic time warping (pure numpy).

Same idea as openai-whisper's timing.py: the alignment heads' attention over audio frames, renormalised over
the real (unpadded) audio, standardised per frame, median-filtered along time and averaged over heads, gives a
token-by-time similarity; the cheapest monotonic path through its negation says when each token is spoken.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_node.core.tokenizer import Tokenizer

TOKENS_PER_SECOND = 50  # one audio position per 20 ms
MEDFILT_WIDTH = 7
PREPEND_PUNCT = "\"'“¿([{-"
APPEND_PUNCT = "\"'.。,，!！?？:：”)]}、"


@dataclass(frozen=True)
class WordTiming:
    word: str
    start: float
    end: float
    probability: float


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a sliding window along the last axis, reflect-padded (so the shape is kept)."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    out: np.ndarray = np.median(windows, axis=-1).astype(x.dtype)
    return out


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cheapest monotonic path through `cost` [n, m] -> (row indices, column indices), start to end.

    Moves: diagonal, down (next row, same time) or right (same row, later time). Filled by anti-diagonals so
    the inner work is vectorised.
    """
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    trace = np.zeros((n + 1, m + 1), np.int8)  # 0 diagonal, 1 from above, 2 from the left
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        c0, c1, c2 = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
        best = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        acc[i, j] = cost[i - 1, j - 1] + np.choose(best, [c0, c1, c2])
        trace[i, j] = best
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j = n, m
    rows, cols = [], []
    while i > 0 or j > 0:
        rows.append(i - 1)
        cols.append(j - 1)
        t = trace[i, j]
        if t == 0:
            i, j = i - 1, j - 1
        elif t == 1:
            i -= 1
        else:
            j -= 1
    path_rows, path_cols = np.array(rows[::-1]), np.array(cols[::-1])
    keep = (path_rows >= 0) & (path_cols >= 0)
    return path_rows[keep], path_cols[keep]


def token_time_matrix(alignment: np.ndarray, n_audio_frames: int) -> np.ndarray:
    """alignment [heads, n_tokens, n_audio] (softmaxed) -> [n_tokens, n_frames] similarity, padding cut
    off."""
    w = alignment[:, :, : max(1, n_audio_frames)].astype(np.float64)
    w = w / np.maximum(w.sum(axis=-1, keepdims=True), 1e-12)  # softmax over the real audio only
    mean = w.mean(axis=-2, keepdims=True)
    std = w.std(axis=-2, keepdims=True)
    w = (w - mean) / np.maximum(std, 1e-12)
    return np.asarray(median_filter(w, MEDFILT_WIDTH).mean(axis=0))


def word_timings(
    tokenizer: Tokenizer,
    text_tokens: list[int],
    matrix: np.ndarray,
    token_probs: list[float],
    offset: float = 0.0,
) -> list[WordTiming]:
    """Words of `text_tokens` with times from `matrix` (rows: the positions predicting each text token and
    then <|endoftext|>) and probabilities as the mean of their tokens'."""
    if not text_tokens:
        return []
    rows, cols = dtw(-matrix)
    words, word_tokens = tokenizer.split_to_word_tokens([*text_tokens, tokenizer.eot])
    if len(word_tokens) <= 1:
        return []
    bounds = np.concatenate([[0], np.cumsum([len(t) for t in word_tokens[:-1]])])
    jumps = np.concatenate([[True], np.diff(rows) > 0])
    jump_times = cols[jumps] / TOKENS_PER_SECOND
    if len(jump_times) < len(text_tokens) + 1:  # a degenerate path: give up on timing rather than guess
        return []
    probs = np.asarray(token_probs[: len(text_tokens)], dtype=np.float64)
    out = []
    for k, word in enumerate(words[:-1]):
        a, b = int(bounds[k]), int(bounds[k + 1])
        out.append(
            WordTiming(
                word, offset + float(jump_times[a]), offset + float(jump_times[b]), float(probs[a:b].mean())
            )
        )
    return _clamp_durations(_merge_punctuation(out))


def _merge_punctuation(words: list[WordTiming]) -> list[WordTiming]:
    """Attach stand-alone opening marks to the next word and closing marks to the previous one."""
    out: list[WordTiming] = []
    carry: WordTiming | None = None
    for w in words:
        stripped = w.word.strip()
        if stripped and all(c in APPEND_PUNCT for c in stripped) and out:
            prev = out[-1]
            out[-1] = WordTiming(prev.word + w.word.strip(), prev.start, prev.end, prev.probability)
            continue
        if w.word.startswith(" ") and stripped and all(c in PREPEND_PUNCT for c in stripped):
            carry = w
            continue
        if carry is not None:
            w = WordTiming(
                carry.word + w.word.lstrip(), carry.start, w.end, min(w.probability, carry.probability)
            )
            carry = None
        out.append(w)
    return out


def _clamp_durations(words: list[WordTiming]) -> list[WordTiming]:
    """Cap words at twice the median word duration: DTW tends to stretch words over neighbouring silence."""
    durations = np.array([w.end - w.start for w in words if w.end > w.start])
    if durations.size == 0:
        return words
    cap = max(2.0 * float(np.median(durations)), 0.4)
    out = []
    for i, w in enumerate(words):
        start, end = w.start, w.end
        if end - start > cap:
            # the first word's start and a word after a pause drift early: keep the end; otherwise keep the
            # start
            if i == 0 or (i > 0 and start > words[i - 1].end):
                start = end - cap
            else:
                end = start + cap
        out.append(WordTiming(w.word, round(start, 2), round(end, 2), round(w.probability, 4)))
    return out
