"""Weights: CTranslate2 parsing, the fetch chain's bad-input handling, and converted checkpoints on real speech."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.asterisk import available, prompts
from fleetctl.models.ct2 import read_ct2
from fleetctl.models.weights import fetch_checkpoint
from shared.errors import UserError
from tests.prereq import require

ROOT = Path(__file__).resolve().parents[2]


def _ct2_string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _tiny_ct2() -> bytes:
    body = struct.pack("<I", 6) + _ct2_string("WhisperSpec") + struct.pack("<II", 1, 1)
    body += _ct2_string("encoder/num_heads") + struct.pack("<B", 0) + struct.pack("<BI", 3, 4) + struct.pack("<i", 6)
    return body + struct.pack("<I", 0)


def test_ct2_reader_parses_a_minimal_file() -> None:
    m = read_ct2(io.BytesIO(_tiny_ct2()))
    assert m.spec_name == "WhisperSpec"
    assert int(m.get("encoder/num_heads")) == 6


@pytest.mark.parametrize("cut", [3, 10, 30, 45])
def test_ct2_reader_rejects_truncated_files(cut: int) -> None:
    with pytest.raises(UserError, match="truncated"):
        read_ct2(io.BytesIO(_tiny_ct2()[:cut]))


def test_ct2_reader_rejects_other_versions() -> None:
    with pytest.raises(UserError, match="version 5"):
        read_ct2(io.BytesIO(struct.pack("<I", 5) + b"\0" * 20))


def test_fetch_unknown_name_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"unknown model 'tiny\.xx'"):
        fetch_checkpoint("tiny.xx", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_fetch_corrupt_path_leaves_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    out = tmp_path / "out" / "tiny.en.pt"
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        fetch_checkpoint("tiny.en", out, path=bad)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no temp file left behind


def test_fetch_unwritable_out_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write"):
        fetch_checkpoint("tiny.en", blocker / "sub" / "tiny.en.pt", offline=True)


def test_fetch_from_user_path_roundtrips(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import torch

    out = tmp_path / "copy.pt"
    fetch_checkpoint("tiny.en", out, path=tiny_checkpoint)
    a = torch.load(out, weights_only=True)
    b = torch.load(tiny_checkpoint, weights_only=True)
    assert a["dims"] == b["dims"]
    tiny_en_heads = [[1, 0], [2, 0], [2, 5], [3, 0], [3, 1], [3, 2], [3, 3], [3, 4]]  # openai-whisper's table
    assert a["alignment_heads"] == b["alignment_heads"] == tiny_en_heads
    assert all(torch.equal(a["model_state_dict"][k], v) for k, v in b["model_state_dict"].items())


def test_fleetctl_fetch_unknown_name_exits_nonzero_without_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fleetctl", "model", "fetch", "huge.xx", "--out", "/tmp/never.pt"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "unknown model 'huge.xx'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_converted_checkpoint_transcribes_real_speech(name: str, tiny_checkpoint: Path, base_checkpoint: Path) -> None:
    """whisper.load_model(path) loads the conversion (strict keys) and gets real prompts right."""
    import jiwer
    import whisper
    from whisper.normalizers import EnglishTextNormalizer

    require(available("en"), "Asterisk English prompts not installed")
    path = tiny_checkpoint if name == "tiny.en" else base_checkpoint
    model = whisper.load_model(str(path), device="cpu")
    norm = EnglishTextNormalizer()
    sample = prompts("en", min_words=4)[:6]
    refs, hyps = [], []
    for p in sample:
        result = model.transcribe(str(p.wav), language="en", fp16=False, temperature=0.0)
        refs.append(norm(p.text))
        hyps.append(norm(str(result["text"])))
    wer = jiwer.wer(refs, hyps)
    assert wer < 0.10, f"{name}: WER {wer:.3f} on {len(sample)} prompts: {list(zip(refs, hyps, strict=True))}"
