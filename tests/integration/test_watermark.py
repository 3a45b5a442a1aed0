"""The fleet watermark (fleetctl/models/watermark.py) on the real tiny.en int8 artifact, through the real
`fleetctl model watermark` commands: found with the right key, not with another key or in an unmarked copy, and
the marked model still transcribes real speech."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge_node.engine.config import EdgeConfig
from edge_node.engine.transcriber import EdgeTranscriber
from evaluation.scoring import word_errors, words
from fleetctl.models.watermark import BITS_PER_TENSOR, detect, embed, read_key
from shared import audio_files
from tests.audio_fixtures import data_prompts

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def fleetctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleetctl", "model", "watermark", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ})


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("wm-keys")
    for name in ("ours.key", "theirs.key"):
        out = fleetctl("init-key", "--out", str(d / name))
        assert out.returncode == 0, out.stderr
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600
    again = fleetctl("init-key", "--out", str(d / "ours.key"))
    assert again.returncode == 2 and "exists" in again.stderr
    return d / "ours.key", d / "theirs.key"


def test_marked_copy_is_recognised_only_with_our_key(edge_artifact: Path, keys: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    ours, theirs = keys
    marked = tmp_path / "copied-artifact"
    shutil.copytree(edge_artifact, marked)
    bits = embed(marked, read_key(ours))
    assert bits >= 60 * BITS_PER_TENSOR  # every int8 MatMul weight of encoder and decoder carries bits
    yes = fleetctl("verify", str(marked), "--key", str(ours))
    assert yes.returncode == 0 and "watermark PRESENT" in yes.stdout and f"{bits}/{bits} bits" in yes.stdout
    no = fleetctl("verify", str(marked), "--key", str(theirs))
    assert no.returncode == 1 and "no watermark for this key" in no.stdout
    plain = detect(edge_artifact, read_key(ours))  # the shipped, unmarked artifact
    assert not plain.present and 0.4 < plain.share < 0.6
    bad = fleetctl("verify", str(tmp_path), "--key", str(ours))
    assert bad.returncode == 2 and "not found: not an edge artifact" in bad.stderr

    # One int8 step on a few thousand of millions of weights: the marked model hears the same speech.
    prompts = data_prompts("en")[:4]
    a = EdgeTranscriber(EdgeConfig(model_dir=edge_artifact, threads=1, word_timestamps=False))
    b = EdgeTranscriber(EdgeConfig(model_dir=marked, threads=1, word_timestamps=False))
    for p in prompts:
        x = audio_files.load_audio(p.wav)
        ta, tb = a.transcribe(x).text, b.transcribe(x).text
        assert word_errors(words(ta, "en"), words(tb, "en")) <= 1, (ta, tb)
        assert word_errors(words(p.text, "en"), words(tb, "en")) <= len(words(p.text, "en")) // 3 + 1, tb
