"""Staged model rollout on the device: fetch over gRPC, verify, load beside the old model, self-test, swap.

Steps for a DesiredModel (any failure leaves the running model untouched and raises UserError with the
reason):

1. Fetch `manifest.json` with FetchModel into `models_dir/.staging/NAME-VERSION/`; its sha256 must be the
   one the (signed) desired-model message names; the message's `manifest_signature` becomes `manifest.sig`.
2. Fetch every file the manifest lists in chunks, resuming from the size of a partial file, retrying transient
   gRPC errors with backoff.
3. `verify_artifact`: the manifest signature against the operator key, then every file's size and sha256.
4. Move the staged directory into place, `ModelTarget.load_candidate`, `self_test`, `swap`; persist the
   reference in the state dir (atomic write) so the device boots on it offline.

The downloads go over `cloud_client.open_channel` with the device's `CloudClientConfig` (TLS, bearer token): the
channel the escalations use, with its rules (no plaintext off loopback, no token in clear), also for a server a
desired-model message names. Without one (a lab server on loopback) the channel is plaintext, with no token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_node.adapters.cloud_client import CloudClientConfig, call_metadata, open_channel
from shared.errors import UserError, VerificationError
from shared.fleet_schema import DesiredModel, parse_payload
from shared.fsutil import atomic_write
from shared.manifest import MANIFEST_NAME, SIGNATURE_NAME, read_manifest, verify_artifact

if TYPE_CHECKING:
    from proto.asr.v1.asr_pb2_grpc import EscalationServiceStub

log = logging.getLogger(__name__)

MODEL_REF_FILE = "model.json"
STAGING = ".staging"
# gRPC codes worth retrying (the download resumes where it stopped); anything else is final.
_TRANSIENT = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL"}


class ModelTarget(Protocol):
    """What the edge engine implements: a second set of sessions beside the serving one, then a swap."""

    def load_candidate(self, directory: Path) -> None: ...  # load sessions from a verified directory

    def self_test(self) -> None: ...  # run the candidate on a known clip; raise when it misbehaves

    def swap(self) -> None: ...  # make the candidate the serving model, atomically between segments

    def discard_candidate(self) -> None: ...  # drop a candidate that failed


@dataclass(frozen=True)
class UpdaterConfig:
    models_dir: Path
    state_dir: Path
    grpc_target: str  # default FetchModel server, host:port (a desired-model message may name another)
    call_timeout_s: float = 120.0
    attempts: int = 4  # per file, resuming each time
    backoff_s: float = 0.5
    keep_models: int = 2  # installed model directories kept (current + previous) for a quick rollback


class ModelUpdater:
    """Installs models; `installed` is the desired-model message of the model now serving."""

    def __init__(self, config: UpdaterConfig, target: ModelTarget, pubkey: Ed25519PublicKey,
                 cloud: CloudClientConfig | None = None) -> None:
        """`cloud`: TLS and the bearer token for FetchModel (its own target is not used: `grpc_target` and the
        message's say where to fetch from); None: a plaintext channel without a token."""
        self.config = config
        self._cloud = cloud
        self._target = target
        self._pubkey = pubkey
        self._lock = threading.Lock()
        self._installed: DesiredModel | None = None

    @property
    def installed(self) -> DesiredModel | None:
        with self._lock:
            return self._installed

    # ------------------------------------------------------------------ boot

    def boot(self) -> DesiredModel | None:
        """Load the last installed model from disk (re-verified), so the device serves without any network."""
        path = self.config.state_dir / MODEL_REF_FILE
        if not path.exists():
            return None
        try:
            doc = json.loads(path.read_text())
            desired = parse_payload(DesiredModel, json.dumps(doc["desired"]).encode())
            directory = Path(doc["path"])
            verify_artifact(directory, self._pubkey)
            self._activate(directory)
        except (OSError, ValueError, KeyError, UserError) as exc:
            log.error("cannot restore the installed model from %s: %s", path, exc)
            return None
        with self._lock:
            self._installed = desired
        log.info("serving %s %s from %s", desired.name, desired.model_version, directory)
        return desired

    # ------------------------------------------------------------------ install

    def install(self, desired: DesiredModel) -> None:
        current = self.installed
        if current is not None and (current.name, current.model_version, current.manifest_sha256) == (
                desired.name, desired.model_version, desired.manifest_sha256):
            self._record(desired, self._model_dir(desired))  # e.g. canary promoted to the fleet: same model
            return
        staging = self.config.models_dir / STAGING / f"{desired.name}-{desired.model_version}"
        staging.mkdir(parents=True, exist_ok=True)
        try:
            self._download(desired, staging)
            manifest = verify_artifact(staging, self._pubkey)
            if (manifest.name, manifest.version) != (desired.name, desired.model_version):
                raise VerificationError(f"manifest is {manifest.name} {manifest.version}, "
                                        f"expected {desired.name} {desired.model_version}")
        except VerificationError:
            shutil.rmtree(staging, ignore_errors=True)  # corrupt or forged: never resume from it
            raise
        final = self._model_dir(desired)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        self._activate(final)
        self._record(desired, final)
        self._prune(keep=final)

    def _model_dir(self, desired: DesiredModel) -> Path:
        return self.config.models_dir / f"{desired.name}-{desired.model_version}"

    def _activate(self, directory: Path) -> None:
        try:
            self._target.load_candidate(directory)
            self._target.self_test()
        except Exception as exc:
            self._target.discard_candidate()
            raise UserError(f"candidate failed to load or self-test: {exc}") from None
        self._target.swap()

    def _record(self, desired: DesiredModel, directory: Path) -> None:
        doc = {"desired": json.loads(desired.to_json()), "path": str(directory)}
        atomic_write(self.config.state_dir / MODEL_REF_FILE, json.dumps(doc).encode())
        with self._lock:
            self._installed = desired

    def _prune(self, keep: Path) -> None:
        dirs = sorted((p for p in self.config.models_dir.iterdir() if p.is_dir() and p.name != STAGING),
                      key=lambda p: p.stat().st_mtime, reverse=True)
        for old in [d for d in dirs if d != keep][self.config.keep_models - 1:]:
            shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------------ download

    def _download(self, desired: DesiredModel, staging: Path) -> None:
        from proto.asr.v1 import asr_pb2_grpc  # grpc: lazy, as everywhere on the edge

        target = desired.fetch.grpc_target or self.config.grpc_target
        with open_channel(target, self._cloud) as channel:
            stub = asr_pb2_grpc.EscalationServiceStub(channel)
            metadata = call_metadata(self._cloud, target)
            name, version = desired.fetch.name, desired.fetch.version
            manifest_path = staging / MANIFEST_NAME
            manifest_path.unlink(missing_ok=True)  # small: always fetched fresh, then pinned by its sha256
            self._fetch_file(stub, name, version, MANIFEST_NAME, manifest_path, expected_size=None,
                             metadata=metadata)
            got = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
            if got != desired.manifest_sha256:
                raise VerificationError(f"{MANIFEST_NAME}: sha256 {got[:12]}… is not the "
                                        f"{desired.manifest_sha256[:12]}… the desired-model message names")
            try:
                sig = base64.b64decode(desired.manifest_signature, validate=True)
            except ValueError:
                raise VerificationError("manifest_signature is not base64") from None
            (staging / SIGNATURE_NAME).write_text(base64.b64encode(sig).decode() + "\n")
            manifest = read_manifest(staging)
            for rel, info in sorted(manifest.files.items()):
                pure = PurePosixPath(rel)
                if pure.is_absolute() or ".." in pure.parts:
                    raise VerificationError(f"{MANIFEST_NAME}: unsafe path {rel!r}")
                dest = staging / pure
                dest.parent.mkdir(parents=True, exist_ok=True)
                self._fetch_file(stub, name, version, rel, dest, expected_size=int(info["size"]),
                                 metadata=metadata)

    def _fetch_file(self, stub: EscalationServiceStub, name: str, version: str, rel: str, dest: Path,
                    expected_size: int | None, *, metadata: tuple[tuple[str, str], ...]) -> None:
        """Fetch one file into `dest`, resuming a partial one; `metadata` carries the token (`call_metadata`)."""
        import grpc

        from proto.asr.v1 import asr_pb2

        for attempt in range(1, self.config.attempts + 1):
            offset = dest.stat().st_size if dest.exists() else 0
            if expected_size is not None and offset > expected_size:
                dest.unlink()  # longer than the manifest says: start over
                offset = 0
            if expected_size is not None and offset == expected_size:
                return
            try:
                request = asr_pb2.ModelRequest(name=name, version=version, file=rel, offset=offset)
                with dest.open("ab") as f:
                    for chunk in stub.FetchModel(request, timeout=self.config.call_timeout_s, metadata=metadata):
                        if chunk.file and chunk.file != rel:
                            raise VerificationError(f"server sent {chunk.file!r} for {rel!r}")
                        if chunk.offset != f.tell():
                            raise VerificationError(f"{rel}: chunk at {chunk.offset}, expected {f.tell()}")
                        if expected_size is not None and chunk.total_size not in (0, expected_size):
                            raise VerificationError(f"{rel}: server size {chunk.total_size} != manifest "
                                                    f"{expected_size}")
                        f.write(chunk.data)
                    f.flush()
                    os.fsync(f.fileno())
                return
            except grpc.RpcError as exc:
                code = exc.code().name if exc.code() else "UNKNOWN"
                if code not in _TRANSIENT or attempt == self.config.attempts:
                    raise UserError(f"FetchModel {name} {version} {rel}: {code} {exc.details()}") from None
                log.warning("FetchModel %s interrupted (%s) at %d bytes; resuming", rel, code,
                            dest.stat().st_size if dest.exists() else 0)
                time.sleep(self.config.backoff_s * 2 ** (attempt - 1))
