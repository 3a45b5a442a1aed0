"""The fleet-update bench runs end to end at a small size (its figures come from the full-size run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.fleet_updates import main

pytestmark = [pytest.mark.mqtt, pytest.mark.redis]


def test_fleet_updates_bench_small(tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    assert main(["--devices", "40", "--rollout-devices", "4", "--rounds", "1", "--artifact-kib", "64",
                 "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["devices"] == 40 and doc["rollout_devices"] == 4
    assert doc["config_ack_s"] > 0 and doc["rollout_s"] > 0
    assert doc["rollout_canary_devices"] == 1
