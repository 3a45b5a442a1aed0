"""Wire audio decoding: real Asterisk recordings (tests/data) in every encoding; bad audio refused with a reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud_service.asr.audio_codec import SAMPLE_RATE, AudioError, DecodedAudio, Encoding, decode_audio
from proto.asr.v1 import asr_pb2
from tests.audio_fixtures import data_prompts, encoded_audio, pcm16_audio


@pytest.fixture(scope="module")
def wav() -> Path:
    return data_prompts("en")[0].wav


def _decode(audio: asr_pb2.Audio, max_s: float = 30.0) -> DecodedAudio:
    return decode_audio(int(audio.encoding), int(audio.sample_rate), audio.data, max_s)


def test_pcm16_flac_and_opus_decode_to_the_same_16k_signal(wav: Path) -> None:
    pcm = _decode(pcm16_audio(wav))
    flac = _decode(encoded_audio(wav, "FLAC", "PCM_16", asr_pb2.Audio.FLAC))
    opus = _decode(encoded_audio(wav, "OGG", "OPUS", asr_pb2.Audio.OPUS))
    assert pcm.source_rate == 8000 and flac.source_rate == 8000
    assert abs(len(pcm.samples) - len(pcm16_audio(wav).data)) <= 16  # 8 kHz int16 bytes = 16 kHz samples
    np.testing.assert_allclose(flac.samples, pcm.samples, atol=1e-4)  # FLAC is lossless
    assert abs(opus.seconds - pcm.seconds) < 0.1  # Opus is lossy, but keeps the duration and the energy
    assert np.std(opus.samples) == pytest.approx(np.std(pcm.samples), rel=0.25)
    assert pcm.samples.dtype == np.float32 and np.abs(pcm.samples).max() <= 1.0


@pytest.mark.parametrize(
    ("encoding", "data", "rate", "message"),
    [
        (Encoding.PCM16, b"", 16000, "empty"),
        (Encoding.PCM16, b"\x00\x01\x02", 16000, "odd number of bytes"),
        (Encoding.PCM16, b"\x00\x00" * 100, 1000, "outside"),
        (Encoding.FLAC, b"fLaC" + b"\x00" * 200, 16000, "corrupt FLAC"),
        (Encoding.OPUS, b"OggS" + b"\xff" * 200, 48000, "corrupt"),
        (Encoding.UNSPECIFIED, b"\x00\x00" * 100, 16000, "unspecified"),
        (7, b"\x00\x00" * 100, 16000, "unknown audio encoding"),
    ],
)
def test_bad_audio_is_refused_with_a_reason(encoding: int, data: bytes, rate: int, message: str) -> None:
    with pytest.raises(AudioError, match=message):
        decode_audio(int(encoding), rate, data, 30.0)


def test_mislabelled_encoding_is_named(wav: Path) -> None:
    flac = encoded_audio(wav, "FLAC", "PCM_16", asr_pb2.Audio.FLAC)
    with pytest.raises(AudioError, match="declared PCM16 but the data is a FLAC file"):
        decode_audio(Encoding.PCM16, 8000, flac.data, 30.0)
    with pytest.raises(AudioError, match="declared OPUS but the data is a FLAC file"):
        decode_audio(Encoding.OPUS, 8000, flac.data, 30.0)
    with pytest.raises(AudioError, match="declared FLAC but the data is not a recognised container"):
        decode_audio(Encoding.FLAC, 8000, pcm16_audio(wav).data, 30.0)


def test_over_long_audio_is_refused_not_cut() -> None:
    data = np.zeros(SAMPLE_RATE * 31, dtype="<i2").tobytes()
    with pytest.raises(AudioError, match=r"31.0 s long; the limit is 30 s"):
        decode_audio(Encoding.PCM16, SAMPLE_RATE, data, 30.0)
    assert decode_audio(Encoding.PCM16, SAMPLE_RATE, data[: SAMPLE_RATE * 2 * 30], 30.0).seconds == 30.0


def test_length_chunks_keep_similar_durations_together() -> None:
    from cloud_service.asr.batch_decoding import length_chunks

    seconds = [5.5, 1.5, 25.4, 3.3, 1.8, 19.2, 2.6]
    chunks = length_chunks(list(range(len(seconds))), [int(s * SAMPLE_RATE) for s in seconds])
    assert [[seconds[i] for i in c] for c in chunks] == [[1.5, 1.8, 2.6], [3.3, 5.5], [19.2, 25.4]]
    assert sorted(i for c in chunks for i in c) == list(range(len(seconds)))
