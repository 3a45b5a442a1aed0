"""Opus in the cloud without libsndfile's Opus support (older Debian): ffmpeg decodes it to the same signal."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from cloud_service.asr import audio_codec
from cloud_service.asr.audio_codec import SAMPLE_RATE, AudioError, Encoding, decode_audio
from proto.asr.v1 import asr_pb2
from shared.audio import resample
from tests.audio_fixtures import data_prompts, encoded_audio
from tests.prereq import require


@pytest.fixture(scope="module")
def opus() -> bytes:
    require(audio_codec.shutil.which("ffmpeg"), "ffmpeg is not installed")
    return encoded_audio(data_prompts("en")[0].wav, "OGG", "OPUS", asr_pb2.Audio.OPUS).data


def test_ffmpeg_and_libsndfile_decode_opus_alike(opus: bytes) -> None:
    ours, rate = audio_codec._decode_ffmpeg_opus(opus, 30.0)
    ref, ref_rate = audio_codec._decode_soundfile(opus, "Ogg/Opus", 30.0)
    ref = resample(ref.astype(np.float32), ref_rate, SAMPLE_RATE)
    assert rate == SAMPLE_RATE and ours.dtype == np.float32
    assert abs(ours.size - ref.size) < SAMPLE_RATE // 20  # same duration (to Opus's pre-skip)
    assert np.std(ours) == pytest.approx(np.std(ref), rel=0.1)


def test_a_server_without_libsndfile_opus_uses_ffmpeg(opus: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    with_sndfile = decode_audio(Encoding.OPUS, 8000, opus, 30.0)
    subtypes = soundfile.available_subtypes
    monkeypatch.setattr(soundfile, "available_subtypes",
                        lambda fmt=None: {} if fmt == "OGG" else subtypes(fmt))  # fmt: skip
    via_ffmpeg = decode_audio(Encoding.OPUS, 8000, opus, 30.0)
    assert via_ffmpeg.source_rate == SAMPLE_RATE  # ffmpeg resampled it; libsndfile reports Opus's own rate
    assert abs(via_ffmpeg.seconds - with_sndfile.seconds) < 0.05


def test_corrupt_opus_and_a_missing_ffmpeg_are_named(opus: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AudioError, match="corrupt Opus audio"):
        audio_codec._decode_ffmpeg_opus(b"OggS" + b"\xff" * 200, 30.0)
    monkeypatch.setattr(audio_codec.shutil, "which", lambda _name: None)
    with pytest.raises(AudioError, match="cannot decode Opus"):
        audio_codec._decode_ffmpeg_opus(opus, 30.0)
