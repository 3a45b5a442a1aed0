"""Hot-word biasing (shared/hotwords.py): trie, bounds, refusals, and that log-probs stay unbiased."""

from __future__ import annotations

import numpy as np
import pytest

from shared.hotwords import (
    MAX_PHRASES,
    BiasOptions,
    EncodedHotwords,
    HotwordBias,
    Trie,
    check_hotwords,
)

EOT = 100


def _bias(spaced: tuple[tuple[int, ...], ...], opts: BiasOptions | None = None) -> HotwordBias:
    return HotwordBias(EncodedHotwords(spaced=spaced), sample_begin=1, eot=EOT, options=opts or BiasOptions())


def test_trie_longest_proper_prefix() -> None:
    t = Trie([(1, 2, 3), (2, 5)])
    assert t.continuation([9, 1, 2]) == (2, [3])
    assert t.continuation([9, 2]) == (1, [5])
    assert t.continuation([9, 1, 2, 3]) == (0, [])  # complete phrase: nothing left to boost


def test_continuation_boosted_more_than_start_and_only_when_started() -> None:
    b = _bias(((1, 2, 3),))
    assert b.boosts([EOT + 1, 7]) == {1: 1.0}  # no started phrase: only the start token, small bonus
    assert b.boosts([EOT + 1, 7, 1, 2]) == {1: 1.0, 3: 3.0}


def test_boost_bounded_by_window_and_masks_kept() -> None:
    b = _bias(((1, 2, 3),), BiasOptions(window=2.0))
    logits = np.zeros((2, 8), dtype=np.float32)
    logits[:, 0] = 5.0  # best token
    logits[0, 3] = 4.0  # within the window: boosted
    logits[1, 3] = -np.inf  # masked by the rules: stays masked
    b.apply(logits, [[EOT + 1, 1, 2], [EOT + 1, 1, 2]])
    assert logits[0, 3] == pytest.approx(7.0)
    assert logits[1, 3] == -np.inf
    far = np.zeros((1, 8), dtype=np.float32)
    far[0, 0] = 10.0
    b.apply(far, [[EOT + 1, 1, 2]])
    assert far[0, 3] == 0.0  # 10 nats below the best: not boosted


def test_refusals() -> None:
    with pytest.raises(ValueError, match="special-token"):
        check_hotwords(["hello <|endoftext|>"])
    with pytest.raises(ValueError, match="at most"):
        check_hotwords([f"word{i}" for i in range(MAX_PHRASES + 1)])
    with pytest.raises(ValueError, match="characters"):
        check_hotwords(["x" * 65])
    assert check_hotwords(["  a  b ", "a b", ""]) == ("a b",)


def test_decoder_logprobs_unbiased() -> None:
    from edge_node.core import decoding
    from edge_node.core.decoding import LogitRules, _scores

    class _R(LogitRules):
        def __init__(self) -> None:
            pass

        def apply(self, logits: np.ndarray, tokens: list[list[int]]) -> None:
            return None

    logits = np.array([[2.0, 1.5, 0.0, 0.0]], dtype=np.float32)
    raw_expected = decoding.log_softmax(logits.copy())
    b = HotwordBias(EncodedHotwords(spaced=((1,),)), sample_begin=0, eot=3, options=BiasOptions(start_bonus=2.0))
    raw, chosen = _scores(logits, [[0]], _R(), b)
    np.testing.assert_allclose(raw, raw_expected)
    assert int(np.argmax(chosen[0])) == 1 and int(np.argmax(raw[0])) == 0
