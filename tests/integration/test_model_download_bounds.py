"""Issue 13, finding 5: a hostile FetchModel server cannot make a device write unbounded data or wait forever.

A deliberately hostile servicer (it plays an impostor or compromised server, not our cloud) streams an endless
manifest, a file longer than its manifest says, a file with no size, or a trickle that never ends. The updater
must refuse each quickly with a UserError naming the problem, write no more than the bound (1 MiB for the
manifest, the manifest's size for a file), remove the staging directory and keep the old model serving.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_node.adapters.model_update import MODEL_REF_FILE, STAGING, ModelUpdater, UpdaterConfig
from proto.asr.v1 import asr_pb2
from shared.errors import UserError
from shared.manifest import MANIFEST_NAME, read_manifest
from testkit.fleet import ArtifactServicer, OnnxTarget, build_artifact, desired_model, serve_artifacts

CAP = 64 << 20  # the hostile server stops by itself after this much (the finding's 64 MiB): never fills a disk
PIECE = 64 << 10
ONES = np.ones((1, 4), np.float32)


class HostileServicer(ArtifactServicer):
    """Version "1" is served honestly; for version "2" one file is `mode`-hostile, the rest honest."""

    def __init__(self, artifacts: dict[tuple[str, str], Path], mode: str) -> None:
        super().__init__(artifacts)
        self.mode = mode
        self.sent = 0  # hostile bytes yielded

    def FetchModel(self, request: asr_pb2.ModelRequest, context: grpc.ServicerContext) -> Iterator[asr_pb2.ModelChunk]:
        target = MANIFEST_NAME if self.mode.startswith("manifest") or self.mode == "slow" else "weights.bin"
        if request.version != "2" or request.file != target:
            yield from super().FetchModel(request, context)
            return
        real = (self.artifacts[("scale", "2")] / request.file).read_bytes()
        total = {"file-endless": len(real), "slow": 64 << 10}.get(self.mode, 0)  # 64 KiB: a plausible manifest
        offset = int(request.offset)
        while self.sent < CAP and context.is_active():
            if self.mode == "slow":  # a valid-looking trickle: 16 bytes every 50 ms, for ever
                time.sleep(0.05)
                data = b" " * 16
            else:  # the real bytes first (so a file looks right), then padding without end
                data = real[offset:offset + PIECE] or b"\0" * PIECE
            yield asr_pb2.ModelChunk(file=request.file, offset=offset, data=data, total_size=total)
            offset += len(data)
            self.sent += len(data)
            if self.mode == "slow" and self.sent > 200 * 16:
                return  # ~10 s: long past the deadline the test sets


class LargestFile:
    """Polls the staging tree and records the largest file seen: a lower bound of what the updater wrote."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.largest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):  # removed meanwhile
                for p in self.root.rglob("*"):
                    self.largest = max(self.largest, p.stat().st_size if p.is_file() else 0)
            time.sleep(0.001)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.largest


@dataclass
class Device:
    updater: ModelUpdater
    target: OnnxTarget
    models: Path
    state: Path


@pytest.fixture()
def artifacts(tmp_path: Path) -> tuple[dict[tuple[str, str], Path], Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    v1, _ = build_artifact(tmp_path / "artifacts", "scale", "1", key, 1.0)
    v2, _ = build_artifact(tmp_path / "artifacts", "scale", "2", key, 2.0)
    return {("scale", "1"): v1, ("scale", "2"): v2}, key


def _device(tmp_path: Path, key: Ed25519PrivateKey, port: int, **config: Any) -> Device:
    target = OnnxTarget()
    state = tmp_path / "device"
    settings: dict[str, Any] = {"attempts": 1, "backoff_s": 0.05, "call_timeout_s": 30.0, **config}
    cfg = UpdaterConfig(models_dir=state / "models", state_dir=state, grpc_target=f"127.0.0.1:{port}", **settings)
    return Device(ModelUpdater(cfg, target, key.public_key()), target, state / "models", state)


# (mode, reason the refusal must name, bound on any file written, extra UpdaterConfig)
CASES = [
    ("manifest-endless", r"manifest\.json: .*(bytes|MiB)", 1 << 20, {}),
    ("file-endless", r"weights\.bin: .*more than the 262144 bytes", 256 << 10, {}),
    ("file-no-size", r"weights\.bin: .*total_size 0", 256 << 10, {}),
    ("slow", r"deadline", 1 << 20, {"download_timeout_s": 1.0}),
]


@pytest.mark.parametrize(("mode", "reason", "bound", "config"), CASES, ids=[c[0] for c in CASES])
def test_hostile_server_is_refused_quickly_with_bounded_writes(
        tmp_path: Path, artifacts: tuple[dict[tuple[str, str], Path], Ed25519PrivateKey], mode: str, reason: str,
        bound: int, config: dict[str, Any]) -> None:
    dirs, key = artifacts
    hostile = HostileServicer(dirs, mode)
    server, port = serve_artifacts(hostile)
    try:
        dev = _device(tmp_path, key, port, **config)
        dev.updater.install(desired_model(dirs[("scale", "1")], f"127.0.0.1:{port}"))  # honest: serving v1
        ref = (dev.state / MODEL_REF_FILE).read_bytes()

        watcher = LargestFile(dev.models / STAGING)
        started = time.monotonic()
        with pytest.raises(UserError, match=reason):
            dev.updater.install(desired_model(dirs[("scale", "2")], f"127.0.0.1:{port}", version=2))
        elapsed, largest = time.monotonic() - started, watcher.stop()
    finally:
        server.stop(0)
    assert elapsed < 5.0, f"refused only after {elapsed:.1f}s"
    assert largest <= bound, f"{largest} bytes written, bound {bound}"
    assert hostile.sent < CAP, "the updater read the whole hostile stream"
    # The staging directory is gone; v1 still serves and is still the one a reboot loads.
    assert not list((dev.models / STAGING).glob("scale-2*"))
    assert dev.target.version == "1" and float(dev.target.infer(ONES)[0, 0]) == 1.0
    assert (dev.state / MODEL_REF_FILE).read_bytes() == ref
    assert json.loads(ref)["desired"]["model_version"] == "1"


def test_honest_downloads_still_pass_the_bounds(
        tmp_path: Path, artifacts: tuple[dict[tuple[str, str], Path], Ed25519PrivateKey]) -> None:
    """The bounds refuse nothing an honest server sends, resumption after a dropped stream included."""
    dirs, key = artifacts
    honest = ArtifactServicer(dirs, fail_once_after=100_000)
    server, port = serve_artifacts(honest)
    try:
        dev = _device(tmp_path, key, port, attempts=3)
        dev.updater.install(desired_model(dirs[("scale", "2")], f"127.0.0.1:{port}"))
    finally:
        server.stop(0)
    assert dev.target.version == "2"
    assert [off for f, off in honest.requests if f == "weights.bin" and off > 0], honest.requests
    assert read_manifest(dev.models / "scale-2").sha256 == read_manifest(dirs[("scale", "2")]).sha256
