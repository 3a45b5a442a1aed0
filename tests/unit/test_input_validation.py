"""Inputs a user hands the tools, refused with one line naming the file and the problem: audio files, the artifact's
mel filters, and evaluation manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from evaluation.manifest import conditions, parse_manifest, read_manifest
from shared import audio_files
from shared.errors import UserError
from tests.audio_fixtures import data_prompts

GOOD = {"id": "a", "audio": "a.wav", "text": "hi", "lang": "en", "condition": "en-clean", "duration": 1.0}


def test_audio_that_is_a_directory_or_holds_nan_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a regular file"):
        audio_files.load_audio(tmp_path)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.0, np.nan, 0.1] * 100, dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(UserError, match=r"nan\.wav: audio contains NaN"):
        audio_files.load_audio(nan)


def test_a_format_for_ffmpeg_without_ffmpeg_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gsm = tmp_path / "prompt.gsm"
    gsm.write_bytes(data_prompts("en")[0].with_ext(".gsm").read_bytes())
    monkeypatch.setattr(audio_files.shutil, "which", lambda _name: None)
    with pytest.raises(UserError, match=r"prompt\.gsm: format needs ffmpeg.*use WAV, FLAC or OGG"):
        audio_files.load_audio(gsm)
    assert audio_files.load_audio(data_prompts("en")[0].wav).size > 0  # WAV needs no ffmpeg


def test_mel_filters_must_be_a_numpy_array_of_the_right_shape(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing mel filters"):
        audio_files.load_mel_filters(tmp_path / "mel_filters.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(UserError, match="not a numpy array file"):
        audio_files.load_mel_filters(tmp_path / "junk.npy")
    np.save(tmp_path / "wrong.npy", np.zeros((80, 100), dtype=np.float32))
    with pytest.raises(UserError, match=r"shape \(80, 100\), expected \[n_mels, 201\]"):
        audio_files.load_mel_filters(tmp_path / "wrong.npy")
    np.save(tmp_path / "ok.npy", np.ones((80, 201), dtype=np.float64))
    assert audio_files.load_mel_filters(tmp_path / "ok.npy").dtype == np.float32


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([GOOD], "expected a JSON object, got list"),
        ({**GOOD, "id": ""}, "'id' must be a non-empty string"),
        ({**GOOD, "text": 3}, "'text' must be a string or null"),
        ({**GOOD, "duration": True}, "'duration' must be a number"),
        ({**GOOD, "duration": "1.0"}, "'duration' must be a number"),
    ],
)
def test_a_bad_manifest_row_is_named_by_its_line(row: object, message: str) -> None:
    with pytest.raises(UserError, match=f"m line 2: {message}"):
        parse_manifest([json.dumps(GOOD), json.dumps(row)], "m")


def test_an_unreadable_manifest_is_named_and_conditions_keep_their_order(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"id": "\xe9"}\n')
    with pytest.raises(UserError, match=r"cannot read manifest .*latin1\.jsonl"):
        read_manifest(bad)
    rows = parse_manifest([json.dumps({**GOOD, "id": i, "condition": c}) for i, c in
                           [("1", "music"), ("2", "en-clean"), ("3", "music"), ("4", "es-clean")]])  # fmt: skip
    assert conditions(rows) == ["music", "en-clean", "es-clean"]
