"""Audio front end: decoding, resampling, and the numpy log-mel against openai-whisper's on tests/data's prompts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from evaluation import asterisk
from shared import audio, audio_files
from shared.errors import UserError
from tests.audio_fixtures import data_prompts
from tests.prereq import require

# Same samples in: our numpy STFT/mel vs whisper's torch one differ only by float32 rounding.
LOG_MEL_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def prompts() -> list[asterisk.Prompt]:
    return data_prompts("en")


def test_log_mel_matches_openai_whisper(prompts: list[asterisk.Prompt]) -> None:
    import torch
    import whisper
    filters = np.load(Path(whisper.__file__).parent / "assets" / "mel_filters.npz")["mel_80"]
    for p in [*prompts, *data_prompts("es"), *data_prompts("fr")]:
        samples = audio_files.load_audio(p.wav)
        assert samples.dtype == np.float32 and samples.ndim == 1
        ref = whisper.log_mel_spectrogram(torch.from_numpy(samples), padding=audio.N_SAMPLES).numpy()
        ours = audio.log_mel_spectrogram(samples, filters, padding=audio.N_SAMPLES)
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() < LOG_MEL_TOLERANCE, p.id
        # and without padding (the reduced-context path)
        ref = whisper.log_mel_spectrogram(torch.from_numpy(samples)).numpy()
        ours = audio.log_mel_spectrogram(samples, filters)
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() < LOG_MEL_TOLERANCE, p.id


def test_load_resamples_8k_to_16k_mono(prompts: list[asterisk.Prompt]) -> None:
    import soundfile

    p = prompts[0]
    native, sr = soundfile.read(str(p.wav), dtype="float32")
    assert sr == 8000
    samples = audio_files.load_audio(p.wav)
    assert abs(len(samples) - 2 * len(native)) <= 2
    # energy is kept by a band-limited resampler
    assert np.sqrt(np.mean(samples**2)) == pytest.approx(np.sqrt(np.mean(native**2)), rel=0.05)


def test_gsm_goes_through_ffmpeg(prompts: list[asterisk.Prompt]) -> None:
    require(shutil.which("ffmpeg"), "ffmpeg is not installed")
    gsm = prompts[0].with_ext(".gsm")
    samples = audio_files.load_audio(gsm)
    wav = audio_files.load_audio(prompts[0].wav)
    assert abs(len(samples) - len(wav)) < audio.SAMPLE_RATE // 10


def test_pad_or_trim() -> None:
    x = np.arange(10, dtype=np.float32)
    assert audio.pad_or_trim(x, 4).tolist() == [0, 1, 2, 3]
    assert audio.pad_or_trim(x, 12).tolist() == [*range(10), 0, 0]
    m = np.ones((80, 5), dtype=np.float32)
    assert audio.pad_or_trim(m, 8).shape == (80, 8)


def test_bad_files_name_the_file(tmp_path: Path, prompts: list[asterisk.Prompt]) -> None:
    cases: dict[str, bytes | None] = {
        "missing.wav": None,
        "empty.wav": b"",
        "garbage.wav": b"this is not audio at all" * 50,
        "garbage.mp3": b"\x00\x01 not an mp3" * 50,
    }
    header_only = prompts[0].wav.read_bytes()[:44]  # a RIFF header whose data never comes
    cases["truncated.wav"] = header_only
    cases["cut.wav"] = prompts[0].wav.read_bytes()[:30]  # cut inside the header
    for name, data in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(UserError, match=name.replace(".", r"\.")):
            audio_files.load_audio(path)
