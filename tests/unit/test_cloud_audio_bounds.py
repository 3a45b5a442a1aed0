"""Decompression bombs (issue 13, finding 3): wire audio is inspected before it is decoded, decoded at most up to the
limit, and ffmpeg is capped by time, output bytes and wall clock. Peak RSS is measured on this process."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import soundfile

from cloud_service.asr import audio_codec
from cloud_service.asr.audio_codec import MAX_CHANNELS, SAMPLE_RATE, AudioError, Encoding, decode_audio
from testkit.memory import MB, PeakRss
from tests.prereq import require


def _flac(seconds: float, channels: int, rate: int) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, np.zeros((int(seconds * rate), channels), dtype=np.float32), rate, format="FLAC",
                    subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def long_ogg() -> bytes:
    buf = io.BytesIO()  # 600 s of Opus at 48 kHz: ~137 KB, 19 MB of 16 kHz PCM16 out of ffmpeg
    soundfile.write(buf, np.zeros(600 * 48_000, dtype=np.float32), 48_000, format="OGG", subtype="OPUS")
    return buf.getvalue()


def test_too_many_channels_are_refused_from_the_header() -> None:
    bomb = _flac(300, 8, 48_000)
    with PeakRss() as rss, pytest.raises(AudioError, match=rf"8 channels; at most {MAX_CHANNELS} are accepted"):
        decode_audio(Encoding.FLAC, 0, bomb, 30.0)
    assert rss.growth_mb < 50, f"RSS grew by {rss.growth_mb:.0f} MB refusing an 8-channel bomb"
    stereo = decode_audio(Encoding.FLAC, 0, _flac(2, 2, 48_000), 30.0)  # stereo is fine, mixed down
    assert stereo.seconds == pytest.approx(2.0) and stereo.samples.ndim == 1


def test_a_stream_longer_than_the_limit_is_refused_before_reading_it() -> None:
    data = _flac(300, 2, 48_000)
    with PeakRss() as rss, pytest.raises(AudioError, match=r"300.0 s long; the limit is 30 s"):
        decode_audio(Encoding.FLAC, 0, data, 30.0)
    assert rss.growth_mb < 50, f"RSS grew by {rss.growth_mb:.0f} MB refusing 300 s of stereo FLAC"


def test_a_flac_stream_that_hides_its_length_is_refused() -> None:
    data = bytearray(_flac(60, 1, 16_000))
    # STREAMINFO's 36-bit total-samples field (bytes 21-25 of the file, low nibble first) at 0: "unknown".
    data[21] &= 0xF0
    data[22:26] = bytes(4)
    with pytest.raises(AudioError, match="does not declare its length"):
        decode_audio(Encoding.FLAC, 0, bytes(data), 30.0)


def test_over_long_pcm16_is_refused_before_conversion() -> None:
    data = bytes(16 * MB)  # the gRPC message limit: 175 s at 48 kHz
    with PeakRss() as rss, pytest.raises(AudioError, match=r"174.8 s long; the limit is 30 s"):
        decode_audio(Encoding.PCM16, 48_000, data, 30.0)
    assert rss.growth_mb < 16, f"RSS grew by {rss.growth_mb:.0f} MB refusing 16 MiB of PCM16"


def test_ffmpeg_decodes_no_more_than_the_limit_of_a_long_ogg(long_ogg: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    require(audio_codec.shutil.which("ffmpeg"), "ffmpeg is not installed")
    subtypes = soundfile.available_subtypes
    monkeypatch.setattr(soundfile, "available_subtypes",
                        lambda fmt=None: {} if fmt == "OGG" else subtypes(fmt))  # fmt: skip
    with PeakRss() as rss, pytest.raises(AudioError, match="longer than the limit of 30 s"):
        decode_audio(Encoding.OPUS, 0, long_ogg, 30.0)
    # Decoding all 600 s cost 19 MB of PCM16 and 2 x 38 MB of float32; 30.5 s of it is under 5 MB.
    assert rss.growth_mb < 40, f"RSS grew by {rss.growth_mb:.0f} MB: ffmpeg's output was not capped"
    samples, rate = audio_codec._decode_ffmpeg_opus(long_ogg, 600.0)  # within a larger limit it all comes out
    assert rate == SAMPLE_RATE and samples.size / SAMPLE_RATE == pytest.approx(600.0, abs=0.1)


def test_a_subprocess_is_killed_past_its_output_cap_or_its_wall_clock() -> None:
    t0 = time.monotonic()
    with pytest.raises(AudioError, match=r"more than 1048576 bytes"):
        audio_codec.run_capped(["yes"], b"", max_bytes=MB, timeout_s=30.0, what="yes")
    with pytest.raises(AudioError, match=r"took longer than 0.5 s"):
        audio_codec.run_capped(["sleep", "30"], b"", max_bytes=MB, timeout_s=0.5, what="sleep")
    assert time.monotonic() - t0 < 10
    code, out, err = audio_codec.run_capped(["cat"], b"abc" * 100_000, max_bytes=MB, timeout_s=30.0, what="cat")
    assert (code, out, err) == (0, b"abc" * 100_000, b"")  # stdin fed from a thread: no pipe deadlock
