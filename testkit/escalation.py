"""Helpers for the escalation black-box tests: a real cloud-service process, speech files, event parsing."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import redis

from cloud_service.jobs.store import register_device
from shared.audio_files import load_audio
from testkit.servers import _Server, cloud_serve_cmd

ROOT = Path(__file__).resolve().parent.parent


class CloudProcess(_Server):
    """`cloud-service serve` on a fixed loopback port, so it can be killed and restarted at the same address."""

    binary = sys.executable
    start_timeout_s = 120.0
    cwd = ROOT
    log_name = "cloud.log"

    def __init__(self, workdir: Path, redis_url: str, port: int | None = None) -> None:
        super().__init__(workdir, port)
        self.redis_url = redis_url

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return cloud_serve_cmd(self.port, ROOT / "models" / "base.pt", "--redis", self.redis_url, "--threads", "2",
                               "--max-wait-ms", "5")

    def add_device(self, name: str) -> str:
        """Register (or re-register) `name` in this cloud's Redis; returns its new bearer token."""
        with redis.Redis.from_url(self.redis_url) as client:
            return register_device(client, name, rotate=True)


def speech_file(path: Path, wavs: list[Path], gap_s: float = 1.0) -> Path:
    """Concatenate real prompts (resampled to 16 kHz) with silence between them."""
    import soundfile as sf

    gap = np.zeros(int(gap_s * 16000), np.float32)
    parts: list[np.ndarray] = [gap]
    for wav in wavs:
        parts += [load_audio(wav), gap]
    sf.write(path, np.concatenate(parts), 16000, subtype="PCM_16")
    return path


def daemon_cmd(source: str, state: Path, events: Path, device: str, cloud: str | None = None,
               token_file: Path | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "edge_node", "run", "--source", source, "--device-id", device,
           "--state-dir", str(state), "--events", str(events), "--threads", "1", "--budget", "1.0"]
    if cloud:
        cmd += ["--cloud", cloud, "--token-file", str(token_file), "--timeout", "20"]
    return cmd + list(extra)


def daemon_env(measure_coverage: bool = True) -> dict[str, str]:
    """The environment a test daemon runs in. `measure_coverage=False` leaves coverage's subprocess hook out: a
    child whose file sizes are capped (`file_size_limit`) could not write its coverage data file at exit."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not measure_coverage:
        for name in ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START"):
            env.pop(name, None)
    return env


def file_size_limit(max_bytes: int) -> Callable[[], None]:
    """A `preexec_fn` giving the child a full disk as it sees it: no file may grow past `max_bytes`
    (RLIMIT_FSIZE, `ulimit -f`; Python ignores SIGXFSZ, so such a write fails with EFBIG instead of killing it)."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return apply


def run_daemon(cmd: list[str], log: Path, timeout: float = 240, stdin: bytes | None = None,
               max_file_bytes: int | None = None) -> int:
    """Run the daemon to its end, stdout and stderr appended to `log`. `max_file_bytes`: see `file_size_limit`
    (it caps `log` too: give such a run a log of its own)."""
    limit = None if max_file_bytes is None else file_size_limit(max_file_bytes)
    with log.open("ab") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=f, timeout=timeout, input=stdin,
                              env=daemon_env(measure_coverage=limit is None), preexec_fn=limit)
    return proc.returncode


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tally(events: list[dict[str, Any]]) -> tuple[set[str], set[str], Counter[str]]:
    """(escalated segment ids, final-at-once segment ids, revisions per segment id)."""
    escalated = {e["segment_id"] for e in events if e["type"] == "segment" and not e["final"]}
    final = {e["segment_id"] for e in events if e["type"] == "segment" and e["final"]}
    revisions = Counter(e["segment_id"] for e in events if e["type"] == "revision")
    return escalated, final, revisions
