"""Issue 13, finding 9a: installing a rebuild of the serving model's own version must never delete or overwrite
the serving directory. Before the fix the updater removed `models/NAME-VERSION` (the serving one) to make room,
then the rebuild failed its self-test: the device still served from memory, but after a reboot no model did.

Real signed artifacts (a tiny ONNX model in onnxruntime), a real gRPC FetchModel server (testkit's
ArtifactServicer, as the other model-update tests use), the real ModelUpdater; a reboot is a new updater and
target calling `boot()` on the same disk.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_node.adapters.model_update import MODEL_REF_FILE, ModelUpdater, UpdaterConfig
from shared.errors import UserError
from testkit.fleet import ArtifactServicer, OnnxTarget, build_artifact, desired_model, serve_artifacts

ONES = np.ones((1, 4), np.float32)


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[ArtifactServicer, int]]:
    servicer = ArtifactServicer({})
    server, port = serve_artifacts(servicer)
    yield servicer, port
    server.stop(0)


def _boot(state: Path, key: Ed25519PrivateKey, port: int) -> tuple[ModelUpdater, OnnxTarget]:
    """A device (re)started on `state`: a fresh updater and target; boot() loads what model.json names."""
    target = OnnxTarget()
    cfg = UpdaterConfig(models_dir=state / "models", state_dir=state, grpc_target=f"127.0.0.1:{port}",
                        backoff_s=0.05)
    updater = ModelUpdater(cfg, target, key.public_key())
    updater.boot()
    return updater, target


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _serving_dir(state: Path) -> Path:
    return Path(json.loads((state / MODEL_REF_FILE).read_text())["path"])


def test_same_version_rebuild_never_touches_the_serving_directory(
        tmp_path: Path, served: tuple[ArtifactServicer, int]) -> None:
    servicer, port = served
    key, state, target_addr = Ed25519PrivateKey.generate(), tmp_path / "device", f"127.0.0.1:{port}"
    # Three builds of version "1": scale 1, scale 3, and a NaN one that fails the self-test.
    builds = {name: build_artifact(tmp_path / name, "scale", "1", key, scale)[0]
              for name, scale in (("one", 1.0), ("nan", float("nan")), ("three", 3.0))}
    updater, target = _boot(state, key, port)

    servicer.artifacts[("scale", "1")] = builds["one"]
    updater.install(desired_model(builds["one"], target_addr))
    serving = _serving_dir(state)
    before = _snapshot(serving)
    assert float(target.infer(ONES)[0, 0]) == 1.0

    # A same-version rebuild that fails its self-test: refused; the serving directory is untouched.
    servicer.artifacts[("scale", "1")] = builds["nan"]
    with pytest.raises(UserError, match="self-test"):
        updater.install(desired_model(builds["nan"], target_addr, version=2))
    assert serving.is_dir() and _snapshot(serving) == before
    assert _serving_dir(state) == serving and float(target.infer(ONES)[0, 0]) == 1.0
    rebooted, target = _boot(state, key, port)
    assert rebooted.installed is not None, "after a reboot no model serves"
    assert float(target.infer(ONES)[0, 0]) == 1.0

    # A same-version rebuild that works: staged into a fresh directory, then switched to; the old one is left
    # whole (it is the previous model now), and a reboot serves the rebuild.
    servicer.artifacts[("scale", "1")] = builds["three"]
    rebooted.install(desired_model(builds["three"], target_addr, version=3))
    assert float(target.infer(ONES)[0, 0]) == 3.0
    rebuilt = _serving_dir(state)
    assert rebuilt != serving and _snapshot(serving) == before
    assert _snapshot(rebuilt) == _snapshot(builds["three"])
    again, target = _boot(state, key, port)
    assert float(target.infer(ONES)[0, 0]) == 3.0

    # Identical content (same manifest sha256): a no-op, nothing fetched, nothing swapped, nothing moved.
    fetched, swaps = len(servicer.requests), target.swaps
    again.install(desired_model(builds["three"], target_addr, version=4))
    assert len(servicer.requests) == fetched and target.swaps == swaps
    assert _serving_dir(state) == rebuilt and _snapshot(rebuilt) == _snapshot(builds["three"])
    assert json.loads((state / MODEL_REF_FILE).read_text())["desired"]["version"] == 4
