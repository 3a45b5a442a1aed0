"""Model rollout on one device over MQTT + gRPC FetchModel: resumable download, verification, self-test,
atomic swap; every kind of bad artifact is NACKed and the old model keeps serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_node.adapters.model_update import ModelUpdater, UpdaterConfig
from edge_node.core.desired_state import ParamsBox
from shared.fleet_schema import DesiredModel, FetchInfo, device_model_topic
from shared.manifest import SIGNATURE_NAME, read_manifest
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
ONES = np.ones((1, 4), np.float32)


def desired_for(directory: Path, version: int, key: Ed25519PrivateKey, port: int, **override: Any) -> bytes:
    """The operator's signed DesiredModel for an artifact, as published (built without checking it, so that
    bad artifacts can be offered to the device)."""
    m = read_manifest(directory)
    fields: dict[str, Any] = dict(
        fleet=FLEET, device="dev1", version=version, name=m.name, model_version=m.version,
        manifest_sha256=m.sha256, size=m.total_bytes,
        manifest_signature=(directory / SIGNATURE_NAME).read_text().strip(),
        fetch=FetchInfo(grpc_target=f"127.0.0.1:{port}", name=m.name, version=m.version),
    )
    fields.update(override)
    return DesiredModel(**fields).signed(key).to_json()


@pytest.fixture()
def artifacts(tmp_path: Path, fleet_env: FleetEnv) -> Iterator[tuple[dict[str, Path], ArtifactServicer, int]]:
    key = fleet_env.keys.private
    root = tmp_path / "artifacts"
    dirs = {
        "v1": build_artifact(root, "scale", "1", key, 1.0)[0],
        "v2": build_artifact(root, "scale", "2", key, 2.0)[0],
        "tampered": build_artifact(root, "scale", "3", key, 3.0)[0],
        "badsig": build_artifact(root, "scale", "4", Ed25519PrivateKey.generate(), 4.0)[0],
        "nan": build_artifact(root, "scale", "5", key, float("nan"))[0],
    }
    weights = dirs["tampered"] / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[1000] ^= 0xFF  # one flipped byte after signing
    weights.write_bytes(bytes(data))
    servicer = ArtifactServicer({("scale", d.name.split("-")[1]): d for d in dirs.values()},
                                fail_once_after=100_000)
    server, port = serve_artifacts(servicer)
    yield dirs, servicer, port
    server.stop(0)


def make_updater(env: FleetEnv, device: str, port: int) -> tuple[ModelUpdater, OnnxTarget]:
    target = OnnxTarget()
    cfg = UpdaterConfig(models_dir=env.root / "devices" / device / "models",
                        state_dir=env.root / "devices" / device, grpc_target=f"127.0.0.1:{port}",
                        backoff_s=0.05)
    return ModelUpdater(cfg, target, load_public_key(env.keys.public_path)), target


def test_model_rollout_verifies_and_nacks_bad_artifacts(fleet_env: FleetEnv, artifacts: Any) -> None:
    dirs, servicer, port = artifacts
    key = fleet_env.keys.private
    topic = device_model_topic(FLEET, "dev1")
    listener = fleet_env.listen()
    updater, target = make_updater(fleet_env, "dev1", port)
    fleet_env.agent("dev1", ParamsBox(), updater)

    # A good model: downloaded in chunks, interrupted once mid-file and resumed from the partial size.
    fleet_env.publish_raw(topic, desired_for(dirs["v1"], 10, key, port))
    ack = listener.wait_ack("dev1", "model", 10)
    assert ack.accepted, ack.reason
    assert target.version == "1" and float(target.infer(ONES)[0, 0]) == 1.0
    resumed = [(f, off) for f, off in servicer.requests if f == "weights.bin" and off > 0]
    assert resumed, f"no resumed request in {servicer.requests}"
    state = json.loads((fleet_env.root / "devices" / "dev1" / "model.json").read_text())
    assert state["desired"]["model_version"] == "1"

    bad = [
        (desired_for(dirs["tampered"], 11, key, port), "sha256 mismatch"),
        (desired_for(dirs["badsig"], 12, key, port), "bad signature"),
        (desired_for(dirs["v2"], 13, key, port, manifest_sha256="0" * 64), "sha256"),
        (desired_for(dirs["nan"], 14, key, port), "self-test"),
        (desired_for(dirs["v2"], 15, Ed25519PrivateKey.generate(), port), "bad signature"),  # forged message
        (b'{"schema": 1, "fleet": "lab", "device": "dev1", "version": 16}', "DesiredModel"),
    ]
    for payload, why in bad:
        version = json.loads(payload)["version"]
        fleet_env.publish_raw(topic, payload)
        ack = listener.wait_ack("dev1", "model", version)
        assert not ack.accepted and why in ack.reason, (why, ack.reason)
        # The old model keeps serving, the persisted reference is unchanged.
        assert target.version == "1" and float(target.infer(ONES)[0, 0]) == 1.0
        state = json.loads((fleet_env.root / "devices" / "dev1" / "model.json").read_text())
        assert state["desired"]["model_version"] == "1"
    assert target.swaps == 1

    # Then a good new model swaps in, and a fresh boot (no network) serves it from disk after re-verifying.
    fleet_env.publish_raw(topic, desired_for(dirs["v2"], 20, key, port))
    assert listener.wait_ack("dev1", "model", 20).accepted
    assert target.version == "2" and float(target.infer(ONES)[0, 0]) == 2.0
    wait_until(lambda: any(s.model_version == "2" for s in listener.states("dev1")), what="state v2")
    rebooted, target2 = make_updater(fleet_env, "dev1", port=1)  # port 1: nothing there
    booted = rebooted.boot()
    assert booted is not None and booted.model_version == "2"
    assert float(target2.infer(ONES)[0, 0]) == 2.0
