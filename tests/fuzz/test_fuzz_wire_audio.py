"""Fuzz the cloud's wire-audio decoder, per encoding: valid speech, mutated containers and random bytes.

Each case either raises AudioError (a ValueError the server turns into INVALID_ARGUMENT, naming the problem) or
returns finite 16 kHz mono samples no longer than the limit. Anything else (another exception, a hang, samples
beyond the limit) fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_service.asr.audio_codec import SAMPLE_RATE, AudioError, Encoding, decode_audio
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.strategies import container, mutated, pcm16, speech_16k

pytestmark = [pytest.mark.fuzz]

MAX_S = 2.0


def _check(encoding: int, rate: int, data: bytes) -> None:
    try:
        out = decode_audio(encoding, rate, data, MAX_S)
    except AudioError as exc:
        assert str(exc)
        return
    assert out.samples.dtype == np.float32 and out.samples.ndim == 1
    assert 0 < out.samples.size <= MAX_S * SAMPLE_RATE + 16
    assert np.isfinite(out.samples).all()


RATES = st.one_of(st.sampled_from([16_000, 8_000, 48_000, 0]), st.integers(0, 2**32 - 1))


@fuzz_settings
@given(data=st.one_of(st.binary(max_size=8192), mutated(pcm16(speech_16k(1.0)))), rate=RATES)
def test_pcm16(data: bytes, rate: int) -> None:
    _check(Encoding.PCM16, rate, data)


@fuzz_settings
@given(data=st.one_of(mutated(container("FLAC")), st.binary(max_size=2048).map(lambda b: b"fLaC" + b)), rate=RATES)
def test_flac(data: bytes, rate: int) -> None:
    _check(Encoding.FLAC, rate, data)


@fuzz_settings
@given(data=st.one_of(mutated(container("OGG")), st.binary(max_size=2048).map(lambda b: b"OggS" + b)), rate=RATES)
def test_opus(data: bytes, rate: int) -> None:
    _check(Encoding.OPUS, rate, data)


@fuzz_settings
@given(encoding=st.integers(-(2**31), 2**31 - 1), data=st.binary(max_size=512), rate=RATES)
def test_any_encoding_value(encoding: int, data: bytes, rate: int) -> None:
    _check(encoding, rate, data)
