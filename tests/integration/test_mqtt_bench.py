"""The fleet-update bench runs end to end at a small size (its figures come from the full-size run).

Run as the script it is (`python -m bench.fleet_updates`), in a subprocess: tests never import bench scripts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.mqtt, pytest.mark.redis]
ROOT = Path(__file__).resolve().parents[2]


def test_fleet_updates_bench_small(tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    cmd = [sys.executable, "-m", "bench.fleet_updates", "--devices", "40", "--rollout-devices", "4", "--rounds", "1",
           "--artifact-kib", "64", "--json", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    doc = json.loads(out.read_text())
    assert doc["devices"] == 40 and doc["rollout_devices"] == 4
    assert doc["config_ack_s"] > 0 and doc["rollout_s"] > 0
    assert doc["rollout_canary_devices"] == 1
