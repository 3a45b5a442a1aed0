"""`edge-node transcribe` as a user runs it: JSON lines, bad files, no torch on the import path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.edge_fixtures import english_prompts

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(args: list[str], extra_py: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, *(extra_py or []), "-m", "edge_node", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False)


def test_json_output_bad_files_and_no_torch(edge_artifact: Path, tmp_path: Path) -> None:
    good = english_prompts(2)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC but not really" * 20)
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(good[0].wav.read_bytes()[:40])
    missing = tmp_path / "missing.wav"
    files = [good[0].wav, empty, missing, corrupt, truncated, good[1].wav]
    proc = _run(
        ["transcribe", "--json", "--threads", "2", "--model-dir", str(edge_artifact), *map(str, files)],
        ["-X", "importtime"],
    )
    assert proc.returncode != 0
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [x["file"] for x in lines] == [str(good[0].wav), str(good[1].wav)]
    for obj in lines:
        assert set(obj) == {"file", "text", "language", "duration", "segments", "timing"}
        assert obj["text"] and obj["language"] == "en" and obj["duration"] > 0 and obj["timing"]["wall_s"] > 0
        for seg in obj["segments"]:
            assert set(seg) == {
                "start",
                "end",
                "text",
                "avg_logprob",
                "no_speech_prob",
                "compression_ratio",
                "confidence",
                "escalate",
                "words",
            }
            assert 0.0 <= seg["confidence"] <= 1.0 and isinstance(seg["escalate"], bool)
            assert all(set(w) == {"word", "start", "end", "probability"} for w in seg["words"])
    # one error line per bad file, naming it, and no traceback
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    for bad in (empty, missing, corrupt, truncated):
        assert sum(str(bad) in e for e in errors) == 1, (bad, errors)
    assert "Traceback" not in proc.stderr
    # -X importtime lists every module imported: torch and whisper must not be among them
    imported = {
        ln.split("|")[-1].strip().split(".")[0] for ln in proc.stderr.splitlines() if "import time:" in ln
    }
    assert "onnxruntime" in imported and "edge_node" in imported
    assert not imported & {"torch", "whisper", "ctranslate2", "faster_whisper"}


def test_bad_model_dir_and_options(tmp_path: Path) -> None:
    wav = english_prompts(1)[0].wav
    proc = _run(["transcribe", "--model-dir", str(tmp_path / "nope"), str(wav)])
    assert proc.returncode == 2 and "manifest.json" in proc.stderr and "Traceback" not in proc.stderr
    proc = _run(["transcribe", "--beam", "0", str(wav)])
    assert proc.returncode == 2 and "--beam" in proc.stderr
