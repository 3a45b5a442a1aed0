"""Fleet operations end to end: last will -> offline in `fleetctl status`, the controller loop recording
into Redis, and staged rollouts: canary then fleet, automatic halt and rollback on a canary NACK, manual
rollback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from edge_node.adapters.model_update import ModelUpdater, UpdaterConfig
from edge_node.core.desired_state import ParamsBox
from fleetctl.__main__ import main as fleetctl_main
from fleetctl.fleet.controller import run_controller
from fleetctl.fleet.mqtt_io import BrokerSettings, collect_retained
from fleetctl.fleet.rollout import pick_canary
from fleetctl.fleet.store import FleetStore, connect_redis
from shared.fleet_schema import (
    DesiredModel,
    Tombstone,
    device_model_topic,
    fleet_model_topic,
    parse_desired,
    parse_payload,
)
from shared.signing import load_public_key
from testkit.fleet import (
    FLEET,
    ArtifactServicer,
    OnnxTarget,
    build_artifact,
    serve_artifacts,
)
from testkit.wait import wait_until

if TYPE_CHECKING:
    from tests.integration.mqtt_fixtures import FleetEnv

pytest_plugins = ["tests.integration.mqtt_fixtures"]
pytestmark = [pytest.mark.mqtt, pytest.mark.redis]
ROOT = Path(__file__).resolve().parents[2]
ONES = np.ones((1, 4), np.float32)


def status_table(env: FleetEnv, capsys: pytest.CaptureFixture[str]) -> dict[str, list[str]]:
    capsys.readouterr()
    assert env.fleetctl("status", sign=False) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:2] == ["DEVICE", "ONLINE"]
    return {line.split()[0]: line.split() for line in lines[1:]}


def test_device_killed_without_disconnect_shows_offline(fleet_env: FleetEnv, capsys: Any) -> None:
    stop = threading.Event()
    settings = BrokerSettings(port=fleet_env.broker.port)
    controller = threading.Thread(target=run_controller,
                                  args=(settings, connect_redis(fleet_env.redis.url), "+", stop))
    controller.start()
    listener = fleet_env.listen()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_node", "agent", "--fleet", FLEET, "--device", "dev9",
         "--broker", f"127.0.0.1:{fleet_env.broker.port}", "--state-dir", str(fleet_env.root / "dev9"),
         "--pubkey", str(fleet_env.keys.public_path), "--keepalive", "2"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: any(s.online for s in listener.states("dev9")), what="dev9 online")
        assert status_table(fleet_env, capsys)["dev9"][1] == "yes"
        proc.kill()  # SIGKILL: no DISCONNECT, the broker must notice (1.5 x keepalive) and publish the will
        proc.wait(10)
        wait_until(lambda: listener.states("dev9") and not listener.states("dev9")[-1].online,
                   what="the last will")
        row = status_table(fleet_env, capsys)["dev9"]
        assert row[1] == "no"
        # The controller recorded it in Redis as well, with the time the device was last heard from.
        store = FleetStore(connect_redis(fleet_env.redis.url), FLEET)
        rec = wait_until(lambda: store.devices().get("dev9", {}).get("state") and store.devices()["dev9"],
                         what="redis record")
        wait_until(lambda: not store.devices()["dev9"]["state"].online, what="offline in redis")
        assert rec["last_seen"] is not None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        stop.set()
        controller.join(10)


@pytest.fixture()
def fleet4(tmp_path: Path, fleet_env: FleetEnv) -> Iterator[dict[str, Any]]:
    key = fleet_env.keys.private
    root = tmp_path / "artifacts"
    dirs = {v: build_artifact(root, "scale", v, key, s)[0] for v, s in (("1", 1.0), ("2", 2.0))}
    dirs["bad"] = build_artifact(root, "scale", "3", key, float("nan"))[0]  # fails every device's self-test
    servicer = ArtifactServicer({("scale", d.name.split("-")[1]): d for d in dirs.values()})
    server, port = serve_artifacts(servicer)
    targets: dict[str, OnnxTarget] = {}
    for i in range(4):
        dev = f"dev{i}"
        targets[dev] = OnnxTarget()
        cfg = UpdaterConfig(models_dir=tmp_path / dev / "models", state_dir=tmp_path / dev,
                            grpc_target=f"127.0.0.1:{port}")
        pub = load_public_key(fleet_env.keys.public_path)
        fleet_env.agent(dev, ParamsBox(), ModelUpdater(cfg, targets[dev], pub))
    wait_until(lambda: len(collect_retained(BrokerSettings(port=fleet_env.broker.port),
                                            f"fleet/{FLEET}/devices/+/state")) == 4, what="4 devices online")
    yield {"dirs": dirs, "servicer": servicer, "port": port, "targets": targets}
    server.stop(0)


def serving(fleet4: dict[str, Any]) -> dict[str, str | None]:
    return {d: t.version for d, t in fleet4["targets"].items()}


def test_canary_nack_halts_and_rolls_back(fleet_env: FleetEnv, fleet4: dict[str, Any], capsys: Any) -> None:
    dirs, servicer = fleet4["dirs"], fleet4["servicer"]
    publish = ["model", "publish", "--canary", "25%", "--then", "all", "--timeout", "30", "--no-progress"]
    store = FleetStore(connect_redis(fleet_env.redis.url), FLEET)

    # 1. A good model goes canary -> fleet -> done.
    assert fleet_env.fleetctl(*publish, str(dirs["1"])) == 0
    assert set(serving(fleet4).values()) == {"1"}
    rec = store.rollout()
    assert rec is not None and rec["state"] == "done" and len(rec["canary"]) == 1
    assert store.stable_model() is not None and store.stable_model().model_version == "1"  # type: ignore[union-attr]
    # The canary's per-device message was cleared with a signed tombstone above its version, not an empty
    # payload (devices ignore those: anyone who can delete a retained message could send one).
    settings = BrokerSettings(port=fleet_env.broker.port)
    cleared = collect_retained(settings, device_model_topic(FLEET, rec["canary"][0]))
    tomb = parse_desired(DesiredModel, next(iter(cleared.values()), b"{}"))
    assert isinstance(tomb, Tombstone) and tomb.kind == "model", tomb
    assert tomb.version > rec["canary_versions"][rec["canary"][0]]
    tomb.verify(fleet_env.keys.private.public_key())

    # 2. A model that fails its self-test: the canary NACKs, the rollout halts and rolls back on its own.
    capsys.readouterr()
    assert fleet_env.fleetctl(*publish, str(dirs["bad"])) != 0
    err = capsys.readouterr().err
    assert "halted" in err and "rolled back to 1" in err and "self-test" in err
    rec = store.rollout()
    assert rec is not None and rec["state"] == "rolled_back"
    canary = rec["canary"]
    assert len(canary) == 1 and rec["failures"][canary[0]].startswith("NACK")
    assert set(serving(fleet4).values()) == {"1"}  # nobody runs the bad model
    fetched_bad = [r for r in servicer.requests if r[0] == "manifest.json"]
    assert len(fetched_bad) == 4 + 1  # 4 devices fetched v1's manifest, only the canary tried the bad one
    retained = collect_retained(settings, device_model_topic(FLEET, canary[0]))
    back = parse_payload(DesiredModel, next(iter(retained.values())))
    assert back.model_version == "1" and back.version > rec["canary_versions"][canary[0]]
    retained = collect_retained(settings, fleet_model_topic(FLEET))
    fleet_msg = parse_payload(DesiredModel, next(iter(retained.values())))
    assert fleet_msg.model_version == "1"  # the fleet-wide desired model never moved
    assert store.stable_model().model_version == "1"  # type: ignore[union-attr]

    # 3. A good v2 to everyone, then a manual rollback returns the whole fleet to v1.
    assert fleet_env.fleetctl(*publish, str(dirs["2"])) == 0
    assert set(serving(fleet4).values()) == {"2"}
    assert all(float(t.infer(ONES)[0, 0]) == 2.0 for t in fleet4["targets"].values())
    assert fleet_env.fleetctl("rollback", "--timeout", "30", "--no-progress") == 0
    wait_until(lambda: set(serving(fleet4).values()) == {"1"}, what="fleet back on v1")
    table = status_table(fleet_env, capsys)
    assert sorted(table) == ["dev0", "dev1", "dev2", "dev3"]
    assert all(row[1] == "yes" and row[2:4] == ["scale", "1"] for row in table.values())


def test_status_escalation_rate_and_one_line_cli_errors(
    fleet_env: FleetEnv, capsys: Any, tmp_path: Path
) -> None:
    listener = fleet_env.listen()
    fleet_env.agent("dev1", ParamsBox(), counters=lambda: {"segments": 40.0, "escalated": 10.0})
    wait_until(lambda: listener.states("dev1"), what="dev1 state")
    row = status_table(fleet_env, capsys)["dev1"]
    assert row[1] == "yes" and row[-1] == "25.0%"

    cases = [
        (["config", "set", "beam_size=99"], "invalid config beam_size"),
        (["config", "set", "nonsense=1"], "invalid config nonsense"),
        (["config", "set", "beam_size"], "expected KEY=VALUE"),
        (["config", "set", "threads=2", "--device", "a/b"], "invalid device id"),
    ]
    unsigned = tmp_path / "unsigned"
    unsigned.mkdir()
    (unsigned / "manifest.json").write_text('{"name": "x", "version": "1", "files": {}}')
    cases.append((["model", "publish", str(unsigned)], "unsigned artifact"))
    for argv, why in cases:
        capsys.readouterr()
        assert fleet_env.fleetctl(*argv) != 0
        err = capsys.readouterr().err
        assert why in err and "Traceback" not in err, (argv, err)
    capsys.readouterr()
    assert fleetctl_main(["status", "--broker", "127.0.0.1:1", "--no-redis", "--fleet", FLEET]) == 2
    assert "cannot reach the MQTT broker" in capsys.readouterr().err


class SlowTarget(OnnxTarget):
    """Holds the candidate load until released, so a device can vanish in the middle of its install."""

    def __init__(self) -> None:
        super().__init__()
        self.loading = threading.Event()
        self.release = threading.Event()

    def load_candidate(self, directory: Path) -> None:
        self.loading.set()
        self.release.wait(30)
        super().load_candidate(directory)


def test_canary_going_offline_halts_the_rollout(fleet_env: FleetEnv, tmp_path: Path, capsys: Any) -> None:
    key = fleet_env.keys.private
    artifact = build_artifact(tmp_path / "artifacts", "scale", "7", key, 7.0)[0]
    server, port = serve_artifacts(ArtifactServicer({("scale", "7"): artifact}))
    targets = {d: SlowTarget() for d in ("dev0", "dev1")}
    agents = {}
    for dev, target in targets.items():
        cfg = UpdaterConfig(models_dir=tmp_path / dev / "models", state_dir=tmp_path / dev,
                            grpc_target=f"127.0.0.1:{port}")
        agents[dev] = fleet_env.agent(dev, ParamsBox(), ModelUpdater(cfg, target,
                                                                    load_public_key(fleet_env.keys.public_path)))
    wait_until(lambda: len(collect_retained(BrokerSettings(port=fleet_env.broker.port),
                                            f"fleet/{FLEET}/devices/+/state")) == 2, what="2 devices online")
    canary = pick_canary(sorted(targets), 0.5, "7")[0]
    rc: list[int] = []
    publish = threading.Thread(target=lambda: rc.append(fleet_env.fleetctl(
        "model", "publish", str(artifact), "--canary", "50%", "--timeout", "30", "--no-progress")))
    publish.start()
    try:
        assert targets[canary].loading.wait(15), "the canary never started installing"
        # The canary's connection drops without a DISCONNECT (a power cut): the broker sends its will.
        agents[canary]._client.socket().shutdown(socket.SHUT_RDWR)
        publish.join(30)
    finally:
        for t in targets.values():
            t.release.set()
        publish.join(30)
        server.stop(0)
    assert rc and rc[0] != 0
    err = capsys.readouterr().err
    assert "halted" in err and f"{canary}: went offline" in err
    store = FleetStore(connect_redis(fleet_env.redis.url), FLEET)
    rec = store.rollout()
    assert rec is not None and rec["state"] == "rolled_back" and rec["failures"] == {canary: "went offline"}
    other = next(d for d in targets if d != canary)
    assert not targets[other].loading.is_set()  # the rest of the fleet never saw the model
