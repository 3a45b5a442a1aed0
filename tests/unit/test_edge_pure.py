"""Pure parts of the edge engine: logit rules, DTW, VAD hysteresis, window planning, confidence policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import whisper.tokenizer as whisper_tokenizer

from edge_node.core import confidence as conf
from edge_node.core.decoding import DecodingOptions, LogitRules, compression_ratio, initial_tokens, needs_fallback
from edge_node.core.timing import dtw, median_filter
from edge_node.core.tokenizer import Tokenizer, get_tokenizer
from edge_node.core.vad_rules import SpeechSegment, VadOptions, segments_from_probs
from edge_node.core.windows import Window, plan_windows
from edge_node.engine.config import AudioContextPolicy


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return get_tokenizer(Path(whisper_tokenizer.__file__).parent / "assets" / "gpt2.tiktoken")


def test_initial_tokens_with_prompt(tok: Tokenizer) -> None:
    hot = tuple(tok.encode(" Asterisk, voicemail"))
    init, sot_index = initial_tokens(tok, DecodingOptions(prompt=hot, without_timestamps=True))
    assert init == [tok.sot_prev, *hot, tok.sot, tok.no_timestamps]
    assert init[sot_index] == tok.sot
    long_prompt = tuple(range(300))
    init, _ = initial_tokens(tok, DecodingOptions(prompt=long_prompt))
    assert len(init) == 1 + 223 + 1 and init[1] == 300 - 223  # the most recent 223 tokens are kept


def test_timestamp_rules_follow_openai_whisper(tok: Tokenizer) -> None:
    """Same masks as whisper's ApplyTimestampRules/SuppressBlank/SuppressTokens on the same token
    histories."""
    import torch
    import whisper.decoding as decoding

    ref_tok = whisper_tokenizer.get_tokenizer(multilingual=False)
    begin = 1
    ours = LogitRules(tok, DecodingOptions(), begin)
    ref_rules = [
        decoding.SuppressBlank(ref_tok, begin),
        decoding.SuppressTokens(
            [
                *ref_tok.non_speech_tokens,
                ref_tok.transcribe,
                ref_tok.translate,
                ref_tok.sot,
                ref_tok.sot_prev,
                ref_tok.sot_lm,
                ref_tok.no_speech,
            ]
        ),
        decoding.ApplyTimestampRules(ref_tok, begin, 50),
    ]
    ts = tok.timestamp_begin
    histories = [
        [tok.sot],
        [tok.sot, ts],
        [tok.sot, ts, 400],
        [tok.sot, ts, 400, ts + 90],
        [tok.sot, ts, 400, ts + 90, ts + 90],
        [tok.sot, ts + 3, 400, 500],
    ]
    rng = np.random.default_rng(0)
    for hist in histories:
        logits = rng.normal(0, 3, size=(1, tok.encoding.n_vocab)).astype(np.float32)
        logits[0, ts:] += rng.normal(0, 1, size=logits.shape[1] - ts).astype(np.float32)
        ref = torch.from_numpy(logits.copy())
        for rule in ref_rules:
            rule.apply(ref, torch.tensor([hist]))
        mine = logits.copy()
        ours.apply(mine, [hist])
        assert np.array_equal(np.isinf(mine), np.isinf(ref.numpy())), hist


def test_fallback_rule_and_compression() -> None:
    from edge_node.core.decoding import DecodingResult

    def r(avg: float, ratio: float, ns: float) -> DecodingResult:
        return DecodingResult((1,), "x", avg, ns, ratio, 0.0)

    assert not needs_fallback(r(-0.2, 1.2, 0.1))
    assert needs_fallback(r(-1.5, 1.2, 0.1))
    assert needs_fallback(r(-0.2, 3.0, 0.1))
    assert not needs_fallback(r(-1.5, 1.2, 0.9))  # silence: no retry
    assert compression_ratio("seven " * 40) > 2.4 > compression_ratio("Please enter your password.")


def test_dtw_finds_the_diagonal_path() -> None:
    cost = np.ones((3, 6))
    for i, j in [(0, 0), (0, 1), (1, 2), (1, 3), (2, 4), (2, 5)]:
        cost[i, j] = 0.0
    rows, cols = dtw(cost)
    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == [
        (0, 0),
        (0, 1),
        (1, 2),
        (1, 3),
        (2, 4),
        (2, 5),
    ]
    x = np.array([[1.0, 9.0, 2.0, 3.0, 4.0]])
    assert median_filter(x, 3).tolist() == [[9.0, 2.0, 3.0, 3.0, 3.0]]  # reflect padding: 9|1 9 2 3 4|3


def test_vad_hysteresis_and_padding() -> None:
    step = 512 / 16000
    probs = np.array([0.1] * 10 + [0.9] * 20 + [0.4] * 3 + [0.9] * 10 + [0.05] * 30 + [0.8] * 3 + [0.0] * 20)
    segs = segments_from_probs(probs, len(probs) * step, VadOptions(pad_s=0.0, min_silence_s=0.3))
    assert len(segs) == 1  # the 0.4 dip is above neg_threshold, the 3-frame burst is too short
    assert segs[0].start == pytest.approx(10 * step) and segs[0].end == pytest.approx(43 * step)
    assert segments_from_probs(np.zeros(50), 1.6) == []


def test_window_planning() -> None:
    assert plan_windows([], 12.0) == []
    assert plan_windows([SpeechSegment(2, 3)], 12.0) == [Window(0.0, 12.0)]
    speech = [SpeechSegment(0, 10), SpeechSegment(12, 25), SpeechSegment(29, 40), SpeechSegment(41, 105)]
    windows = plan_windows(speech, 110.0)
    assert all(w.end - w.start <= 30.0 for w in windows)
    assert windows[0] == Window(0, 25)
    covered = sum(w.end - w.start for w in windows)
    assert covered == pytest.approx(25 + 11 + 64)  # pauses inside a window are kept, between windows not


def test_audio_context_policy() -> None:
    p = AudioContextPolicy()
    assert p.frames_for(200) == 1500 and p.frames_for(900) == 1900 and p.frames_for(2100) == 3000
    assert AudioContextPolicy(full=True).frames_for(200) == 3000


def test_confidence_policy_is_monotonic_and_configurable() -> None:
    sure = conf.features([-0.05] * 10, [0.1] * 10, 0.02, 1.1, 0.0)
    unsure = conf.features([-0.05] * 8 + [-3.0, -2.5], [2.5] * 10, 0.1, 1.1, 0.0)
    v_sure, v_unsure = conf.judge(sure), conf.judge(unsure)
    assert 0.0 <= v_unsure.confidence < v_sure.confidence <= 1.0
    assert not v_sure.escalate and v_unsure.escalate
    assert conf.judge(sure, conf.ConfidenceConfig(escalate_below=0.9999)).escalate
    fell_back = conf.features([-0.05] * 10, [0.1] * 10, 0.02, 1.1, 0.4)
    assert conf.judge(fell_back).escalate
    noise = conf.features([-1.2] * 5, [3.0] * 5, 0.8, 1.0, 0.0)
    assert conf.judge(noise).drop
