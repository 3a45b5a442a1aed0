"""The torch-free tokenizer gives exactly openai-whisper's ids (the test side may import whisper)."""

from __future__ import annotations

from pathlib import Path

import pytest
import whisper.tokenizer as whisper_tokenizer

from edge_node.core.tokenizer import get_tokenizer
from shared.errors import UserError


@pytest.fixture(scope="module")
def pair() -> tuple:
    vocab = Path(whisper_tokenizer.__file__).parent / "assets" / "gpt2.tiktoken"
    return get_tokenizer(vocab), whisper_tokenizer.get_tokenizer(multilingual=False)


def test_special_token_ids_match_openai_whisper(pair: tuple) -> None:
    ours, ref = pair
    for name in (
        "eot",
        "sot",
        "transcribe",
        "translate",
        "sot_lm",
        "sot_prev",
        "no_speech",
        "no_timestamps",
        "timestamp_begin",
    ):
        assert getattr(ours, name) == getattr(ref, name), name
    assert ours.sot_sequence == ref.sot_sequence
    assert ours.sot_sequence_including_notimestamps == ref.sot_sequence_including_notimestamps
    assert sorted(ours.all_language_tokens) == sorted(ref.all_language_tokens)  # whisper builds it from a set
    assert ours.language_token("fr") == ref.to_language_token("fr")
    assert ours.non_speech_tokens == tuple(ref.non_speech_tokens)
    assert ours.encoding.n_vocab == ref.encoding.n_vocab == 51864
    assert ours.special == ref.encoding._special_tokens


def test_text_round_trip_and_word_split_match(pair: tuple) -> None:
    ours, ref = pair
    text = " Please enter your mailbox number, followed by the pound key. Café ♪ 1,234"
    tokens = ours.encode(text)
    assert tokens == ref.encode(text)
    assert ours.decode(tokens) == text
    with_eot = [*tokens, ours.eot]
    assert ours.split_to_word_tokens(with_eot) == ref.split_to_word_tokens(with_eot)
    stamped = [ours.timestamp_begin, *tokens, ours.timestamp_begin + 100]
    assert ours.decode_with_timestamps(stamped) == ref.decode_with_timestamps(stamped)
    assert ours.decode(stamped) == ref.decode(stamped)


def test_bad_tokenizer_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.tiktoken"
    with pytest.raises(UserError, match=r"nope\.tiktoken"):
        get_tokenizer(missing)
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("not base64 at all\n")
    with pytest.raises(UserError, match=r"bad\.tiktoken"):
        get_tokenizer(bad)
