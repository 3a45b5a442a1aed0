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


# -- shared rules: the REST prompt, the bounded bonus, the MQTT live parameter --------------------------------------


def test_prompt_hotwords_rule() -> None:
    from shared.hotwords import prompt_hotwords

    assert prompt_hotwords("Home Assistant, Kitchen lights\nDigium;  PBX") == (
        "Home Assistant", "Kitchen lights", "Digium", "PBX")
    assert prompt_hotwords("The call was about the Asterisk PBX budget.") == ()  # prose: over 4 words
    assert prompt_hotwords("Hello there. Goodbye.") == ()  # sentences, not phrases
    assert prompt_hotwords("") == () and prompt_hotwords(" , ,") == ()
    assert prompt_hotwords(",".join(f"w{i}" for i in range(MAX_PHRASES + 1))) == ()
    assert prompt_hotwords("a <|endoftext|>") == ()  # refused text never becomes a hot-word


def test_bounded_bonus() -> None:
    from shared.hotwords import bounded_bonus

    out = bounded_bonus(np.array([9.0, 3.9, -np.inf]), 10.0, np.array([3.0, 3.0, 3.0]), window=6.0)
    np.testing.assert_array_equal(out, [3.0, 0.0, 0.0])


def test_schema_hotwords_bounds() -> None:
    from pydantic import ValidationError

    from shared.errors import UserError
    from shared.fleet_schema import ConfigParams, parse_payload

    assert ConfigParams(hotwords=(" Home  Assistant ", "Home Assistant", "PBX")).hotwords == ("Home Assistant", "PBX")
    assert ConfigParams(hotwords=()).hotwords == ()
    for bad, why in (
        ([f"w{i}" for i in range(MAX_PHRASES + 1)], "at most 100"),
        (["x" * 65], "over 64 characters"),
        (["ok", "  "], "non-empty"),
        (["a <|endoftext|> b"], "special-token"),
    ):
        with pytest.raises(ValidationError, match=why):
            ConfigParams(hotwords=tuple(bad))
    with pytest.raises(UserError, match=r"ConfigParams: hotwords: .*special-token"):
        parse_payload(ConfigParams, b'{"hotwords": ["<|en|>"]}')


def test_live_param_hotwords_applied_inherited_and_cleared() -> None:
    from edge_node.core.escalation_policy import EscalationPolicy
    from edge_node.daemon.live_params import Tunables, apply_params
    from edge_node.engine.config import EdgeConfig
    from shared.fleet_schema import ConfigParams

    base = Tunables(EdgeConfig(hotwords=("Digium",)), EscalationPolicy())
    assert apply_params(ConfigParams(hotwords=("Home Assistant", "Kitchen lights")), base).edge.hotwords == (
        "Home Assistant", "Kitchen lights")
    assert apply_params(ConfigParams(), base).edge.hotwords == ("Digium",)  # unset: the daemon's own
    assert apply_params(ConfigParams(hotwords=()), base).edge.hotwords == ()  # an empty list: none
    device = ConfigParams(hotwords=("PBX",)).merged_over(ConfigParams(hotwords=("IVR",), beam_size=2))
    assert device.hotwords == ("PBX",) and device.beam_size == 2


def test_fleetctl_assignment_splits_hotwords() -> None:
    from fleetctl.fleet.rollout import apply_updates, parse_assignments
    from shared.errors import UserError
    from shared.fleet_schema import ConfigParams

    updates = parse_assignments(["hotwords=Home Assistant, Kitchen lights", "beam_size=2"])
    assert updates == {"hotwords": ["Home Assistant", "Kitchen lights"], "beam_size": 2}
    assert apply_updates(ConfigParams(), updates).hotwords == ("Home Assistant", "Kitchen lights")
    assert parse_assignments(['hotwords=["Smith, John"]']) == {"hotwords": ["Smith, John"]}
    with pytest.raises(UserError, match="invalid config hotwords"):
        apply_updates(ConfigParams(), parse_assignments(["hotwords=" + "x" * 65]))
