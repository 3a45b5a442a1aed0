"""Real parts for the fleet tests and bench: a FetchModel gRPC servicer over artifact directories, small
signed ONNX artifacts, an onnxruntime ModelTarget and a ParamsTarget that records what each segment saw.

No pytest here: `bench.fleet_updates` uses these too.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proto.asr.v1 import asr_pb2, asr_pb2_grpc
from shared.fleet_schema import ConfigParams, DesiredModel, FetchInfo
from shared.manifest import SIGNATURE_NAME, Manifest, read_manifest, write_manifest

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

CHUNK = 64 * 1024
FLEET = "lab"


class ArtifactServicer(asr_pb2_grpc.EscalationServiceServicer):
    """FetchModel over {(name, version): directory}. `fail_once_after` drops the first stream after that many
    bytes with UNAVAILABLE, as a flaky link would, so resumption is exercised."""

    def __init__(self, artifacts: dict[tuple[str, str], Path], fail_once_after: int | None = None) -> None:
        self.artifacts = artifacts
        self.fail_once_after = fail_once_after
        self.requests: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def FetchModel(self, request: asr_pb2.ModelRequest, context: grpc.ServicerContext) -> Iterator[asr_pb2.ModelChunk]:
        directory = self.artifacts.get((request.name, request.version))
        if directory is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no artifact {request.name} {request.version}")
        assert directory is not None  # abort() raised otherwise
        path = (directory / request.file).resolve()
        if directory.resolve() not in path.parents or not path.is_file():
            context.abort(grpc.StatusCode.NOT_FOUND, f"no file {request.file!r} in {request.name}")
        size = path.stat().st_size
        if request.offset > size:
            context.abort(grpc.StatusCode.OUT_OF_RANGE, f"offset {request.offset} > size {size}")
        with self._lock:
            self.requests.append((request.file, int(request.offset)))
        sha = ""
        with contextlib.suppress(Exception):  # manifest.json itself is not in the manifest
            sha = str(read_manifest(directory).files.get(request.file, {}).get("sha256", ""))
        sent = 0
        with path.open("rb") as f:
            f.seek(request.offset)
            offset = int(request.offset)
            while data := f.read(CHUNK):
                with self._lock:
                    fail = self.fail_once_after is not None and sent >= self.fail_once_after
                    if fail:
                        self.fail_once_after = None
                if fail:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "link dropped (test fault)")
                yield asr_pb2.ModelChunk(file=request.file, offset=offset, data=data, total_size=size,
                                         sha256=sha)
                offset += len(data)
                sent += len(data)


def serve_artifacts(servicer: ArtifactServicer, workers: int = 8) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    asr_pb2_grpc.add_EscalationServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def make_scale_onnx(path: Path, scale: float) -> None:
    """A real (tiny) ONNX model: y = x * scale, x float32 [1, 4]. The scale tells versions apart."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    k = helper.make_tensor("k", TensorProto.FLOAT, [1], [scale])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "scale", [x], [y], [k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def build_artifact(root: Path, name: str, version: str, key: Ed25519PrivateKey, scale: float,
                   extra_bytes: int = 256 * 1024) -> tuple[Path, Manifest]:
    """A signed artifact directory: scale.onnx plus a data file big enough to need several chunks."""
    directory = root / f"{name}-{version}"
    directory.mkdir(parents=True)
    make_scale_onnx(directory / "scale.onnx", scale)
    (directory / "weights.bin").write_bytes(os.urandom(extra_bytes))
    manifest = write_manifest(directory, {"name": name, "version": version, "model": "scale-test"}, key)
    return directory, manifest


def desired_model(directory: Path, grpc_target: str, version: int = 1, device: str = "dev1") -> DesiredModel:
    """The (unsigned) DesiredModel `fleetctl model publish` would send for the artifact in `directory`: what
    `ModelUpdater.install` takes once the agent has checked the message's signature."""
    m = read_manifest(directory)
    return DesiredModel(fleet=FLEET, device=device, version=version, name=m.name, model_version=m.version,
                        manifest_sha256=m.sha256, size=m.total_bytes,
                        manifest_signature=(directory / SIGNATURE_NAME).read_text().strip(),
                        fetch=FetchInfo(grpc_target=grpc_target, name=m.name, version=m.version))


class OnnxTarget:
    """A ModelTarget with real onnxruntime sessions: the candidate loads beside the serving model; the swap is
    one reference assignment under a lock, so `infer` always uses a complete model."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._serving: tuple[str, InferenceSession] | None = None  # (version, session)
        self._candidate: tuple[str, InferenceSession] | None = None
        self.swaps = 0

    def load_candidate(self, directory: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(str(directory / "scale.onnx"), opts,
                                       providers=["CPUExecutionProvider"])
        self._candidate = (read_manifest(directory).version, session)

    def self_test(self) -> None:
        assert self._candidate is not None
        out = self._candidate[1].run(None, {"x": np.ones((1, 4), np.float32)})[0]
        if out.shape != (1, 4) or not np.isfinite(out).all():
            raise RuntimeError(f"self-test output {out!r} is not a finite [1, 4] tensor")

    def swap(self) -> None:
        with self._lock:
            self._serving, self._candidate = self._candidate, None
            self.swaps += 1

    def discard_candidate(self) -> None:
        self._candidate = None

    @property
    def version(self) -> str | None:
        with self._lock:
            return self._serving[0] if self._serving else None

    def infer(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            serving = self._serving
        if serving is None:
            raise RuntimeError("no model loaded")
        return np.asarray(serving[1].run(None, {"x": x.astype(np.float32)})[0])


@dataclass
class RecordingEngine:
    """A ParamsTarget standing in for the edge engine's segment loop: each processed item takes the params
    current at its start (one reference read under the lock) and records the decision those params give."""

    _params: ConfigParams = field(default_factory=ConfigParams)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    applied: list[ConfigParams] = field(default_factory=list)
    decisions: list[tuple[float, float | None, bool]] = field(default_factory=list)

    def apply_params(self, params: ConfigParams) -> None:
        with self._lock:
            self._params = params
            self.applied.append(params)

    def process(self, confidence: float) -> bool:
        """Escalate a segment with this confidence? Uses the threshold in force when the segment starts."""
        with self._lock:
            params = self._params
        threshold = params.thresholds.confidence if params.thresholds else None
        escalate = threshold is not None and confidence < threshold
        self.decisions.append((confidence, threshold, escalate))
        return escalate

    def current(self) -> ConfigParams:
        with self._lock:
            return self._params
