"""The evaluation entry points as a user runs them, on a manifest of the checked-in prompts (tests/data):
`python -m bench.local_cloud` (a real Redis and `cloud-service serve` with tiny.en), `bench.hybrid_eval` against it
with `--cloud`, and `bench.baseline` with openai-whisper tiny.en."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_node.core.confidence import ConfidenceConfig
from evaluation import baseline, hybrid_eval
from evaluation.manifest import read_manifest
from testkit.servers import port_open
from testkit.wait import wait_until
from tests.audio_fixtures import data_prompts

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three English prompts as a corpus manifest (8 kHz WAVs: the readers resample). No Spanish one: tiny.en
    loops on it at the edge and falls back through every temperature in the cloud, 15 s of CPU for no check."""
    import soundfile as sf

    out = tmp_path_factory.mktemp("manifest")
    rows = []
    for p in data_prompts("en"):
        name = f"{p.lang}-{p.id}.wav"
        shutil.copy(p.wav, out / name)
        rows.append({"id": f"{p.lang}-clean/{p.id}", "audio": name, "text": p.text, "lang": p.lang,
                     "condition": f"{p.lang}-clean", "duration": sf.info(str(p.wav)).duration})  # fmt: skip
    path = out / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(read_manifest(path)) == 3
    return path


@pytest.fixture()
def local_cloud(tmp_path: Path, tiny_checkpoint: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    token = tmp_path / "token"
    token.write_text("stale\n")
    token.chmod(0o644)
    cmd = [sys.executable, "-m", "bench.local_cloud", "--token-file", str(token), "--model", str(tiny_checkpoint),
           "--device-id", "eval-dev", "--threads", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        assert proc.stdout is not None
        target = proc.stdout.readline().strip()  # printed once serve listens, after the token is written
        assert target.startswith("127.0.0.1:"), (target, proc.poll())
        yield proc, target, token
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.slow
@pytest.mark.redis
def test_hybrid_eval_against_a_local_cloud_then_the_cloud_stops_on_sigterm(
    local_cloud: tuple[subprocess.Popen[str], str, Path], manifest: Path, edge_artifact: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    proc, target, token = local_cloud
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.read_text().strip() != "stale"
    out = tmp_path / "out"
    argv = ["--manifest", str(manifest), "--json", str(out / "hybrid.json"), "--plot", str(out / "hybrid.png"),
            "--rows", str(out / "rows.jsonl"), "--cloud", target, "--token-file", str(token),
            "--device-id", "eval-dev", "--thresholds", "0,1.01", "--cloud-only-language", "en"]  # fmt: skip
    assert hybrid_eval.main(argv) == 0
    printed = capsys.readouterr()
    assert "hybrid@" in printed.out and "3/3 en-clean/tt-weasels" in printed.err

    doc = json.loads((out / "hybrid.json").read_text())
    assert doc["setup"]["clips"] == 3 and doc["setup"]["cloud_calls"] >= 3  # one cloud-only call per clip at least
    default = ConfidenceConfig().escalate_below  # always in the sweep: it is the shipped threshold
    assert [p["threshold"] for p in doc["hybrid"]] == sorted({0.0, default, 1.01})
    assert doc["chosen"]["threshold"] == default
    assert doc["cloud"]["escalated_seconds_fraction"] == pytest.approx(1.0)  # cloud-only sends everything
    assert doc["edge"]["escalated_seconds_fraction"] == 0.0
    assert doc["edge"]["wer_by_condition"]["en-clean"] <= 0.2  # tiny.en int8 on clean telephone prompts
    assert doc["cloud"]["wer_by_condition"]["en-clean"] <= 0.2  # tiny.en on the cloud: the same model in fp32
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(r.id for r in read_manifest(manifest))
    assert (out / "hybrid.png").read_bytes()[:8] == PNG

    proc.send_signal(signal.SIGTERM)  # leaves the with-block: serve drained and stopped, Redis stopped
    assert proc.wait(60) == 0
    port = int(target.rsplit(":", 1)[1])
    wait_until(lambda: not port_open(port), 10, "serve's port to close")


def test_hybrid_eval_refuses_bad_arguments(manifest: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    base = ["--manifest", str(manifest), "--json", str(tmp_path / "h.json")]
    for extra, message in [
        (["--thresholds", "0.2,x"], "thresholds must be numbers"),
        (["--thresholds", "-0.1"], "none negative"),
        (["--limit-per-condition", "0"], "--limit-per-condition must be positive"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            hybrid_eval.main([*base, *extra])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert hybrid_eval.main([*base, "--cloud", "127.0.0.1:9"]) == 2  # no token for a given cloud
    assert "--cloud needs --token-file" in capsys.readouterr().err
    assert not (tmp_path / "h.json").exists()


@pytest.mark.slow
def test_baseline_scores_openai_whisper_on_the_manifest(
    manifest: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["--manifest", str(manifest), "--model", str(tiny_checkpoint), "--condition", "en-clean",
            "--threads", "2", "--json", str(out / "point.json"), "--rows", str(out / "rows.jsonl")]  # fmt: skip
    assert baseline.main(argv) == 0
    assert "en-clean" in capsys.readouterr().out
    point = json.loads((out / "point.json").read_text())
    assert point["clips"] == 3 and point["wer"] <= 0.2
    assert point["escalated_seconds_fraction"] == 0.0  # edge mode: nothing sent anywhere
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert [r["condition"] for r in rows] == ["en-clean"] * 3
    assert all(r["language"] == "en" and r["hypothesis"] for r in rows)

    assert baseline.main(["--manifest", str(manifest), "--model", str(tmp_path / "nope.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
