"""Staged model rollout on the device: fetch over gRPC, verify, load beside the old model, self-test, swap.

Steps for a DesiredModel (any failure leaves the running model untouched and raises UserError with the
reason):

1. Fetch `manifest.json` with FetchModel into `models_dir/.staging/NAME-VERSION-SHA12/`, at most
   MAX_MANIFEST_BYTES of it; its sha256 must be the one the (signed) desired-model message names; the message's
   `manifest_signature` becomes `manifest.sig`.
2. Fetch every file the manifest lists in chunks, resuming from the size of a partial file, retrying transient
   gRPC errors with backoff. Each file is bounded by its manifest size while it is written.
3. `verify_artifact`: the manifest signature against the operator key, then every file's size and sha256.
4. Move the staged directory to a fresh directory (never the serving one), `ModelTarget.load_candidate`,
   `self_test`, `swap`; persist the reference in the state dir (atomic write) so the device boots on it offline.

Bounds against a hostile or broken server (issue 13, finding 5): no byte beyond the bound is written (the
manifest's size for a file, MAX_MANIFEST_BYTES for the manifest, whose sha256 can only be checked once it is
whole); every chunk must carry the expected offset and the same total_size (a file's must be its manifest size);
all downloads of one install share one deadline (`download_timeout_s`). A breach raises DownloadRefusedError
and removes the staging directory: nothing of such a server is resumed from.

A rebuild of the serving model's own name and version (issue 13, finding 9a) is staged and installed into a
directory of its own (`NAME-VERSION-SHA12`): the serving directory is never deleted or overwritten, so a failed
self-test, a crash or a reboot always finds the old model whole; identical content (same manifest sha256) is a
no-op.

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
from shared.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, SIGNATURE_NAME, read_manifest, verify_artifact

if TYPE_CHECKING:
    from proto.asr.v1 import asr_pb2
    from proto.asr.v1.asr_pb2_grpc import EscalationServiceStub

log = logging.getLogger(__name__)

MODEL_REF_FILE = "model.json"
STAGING = ".staging"
# gRPC codes worth retrying (the download resumes where it stopped); anything else is final.
_TRANSIENT = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL"}


class DownloadRefusedError(UserError):
    """The server broke a download's bounds (more bytes than allowed, offsets or sizes that disagree) or the
    download overran its deadline. Its staging directory is removed: nothing such a server sent is resumed from."""


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
    call_timeout_s: float = 120.0  # one FetchModel stream
    attempts: int = 4  # per file, resuming each time
    backoff_s: float = 0.5
    # All the downloads of one install, retries included: a server that trickles bytes (or never ends a stream
    # inside the size bounds) is refused after this. tiny.en is 41 MB: 15 min is ~45 kB/s, a poor cellular link.
    download_timeout_s: float = 900.0
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
        self._installed_dir: Path | None = None  # the directory the serving model was loaded from

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
            self._installed, self._installed_dir = desired, directory
        log.info("serving %s %s from %s", desired.name, desired.model_version, directory)
        return desired

    # ------------------------------------------------------------------ install

    def install(self, desired: DesiredModel) -> None:
        with self._lock:
            current, current_dir = self._installed, self._installed_dir
        if current is not None and current_dir is not None and (
                current.name, current.model_version, current.manifest_sha256) == (
                desired.name, desired.model_version, desired.manifest_sha256):
            self._record(desired, current_dir)  # the same bytes (e.g. canary promoted to the fleet): a no-op
            return
        staging = self.config.models_dir / STAGING / _dir_name(desired, with_sha=True)
        staging.mkdir(parents=True, exist_ok=True)
        try:
            self._download(desired, staging)
            manifest = verify_artifact(staging, self._pubkey)
            if (manifest.name, manifest.version) != (desired.name, desired.model_version):
                raise VerificationError(f"manifest is {manifest.name} {manifest.version}, "
                                        f"expected {desired.name} {desired.model_version}")
        except (VerificationError, DownloadRefusedError):
            shutil.rmtree(staging, ignore_errors=True)  # corrupt, forged or hostile: never resume from it
            raise
        final = self._fresh_dir(desired)
        os.replace(staging, final)  # `final` does not exist: an atomic rename, nothing serving is touched
        try:
            self._activate(final)
        except UserError:
            shutil.rmtree(final, ignore_errors=True)  # never served; the serving model and its directory stay
            raise
        self._record(desired, final)  # the switch a reboot sees: model.json, written atomically
        self._prune(keep=final)

    def _fresh_dir(self, desired: DesiredModel) -> Path:
        """Where an install goes: `NAME-VERSION`, or `NAME-VERSION-SHA12` when that is the serving directory (a
        same-version rebuild). Never the serving directory; a stale one in the way (an older copy, the leftover
        of a crash) serves nothing and is removed."""
        serving = self._serving_dir()
        for with_sha in (False, True):
            candidate = self.config.models_dir / _dir_name(desired, with_sha=with_sha)
            if serving is not None and _same_path(candidate, serving):
                continue
            if candidate.exists():
                shutil.rmtree(candidate)
            return candidate
        raise AssertionError("unreachable: the two names differ, so one is not the serving directory")

    def _serving_dir(self) -> Path | None:
        """The directory of the serving model, or the one model.json names (a boot that failed to load it may
        still be retried on the next start: it is not to be removed either)."""
        with self._lock:
            if self._installed_dir is not None:
                return self._installed_dir
        try:
            return Path(json.loads((self.config.state_dir / MODEL_REF_FILE).read_text())["path"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

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
            self._installed, self._installed_dir = desired, directory

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
            source = _Source(asr_pb2_grpc.EscalationServiceStub(channel), desired.fetch.name,
                             desired.fetch.version, call_metadata(self._cloud, target),
                             time.monotonic() + self.config.download_timeout_s, self.config.download_timeout_s)
            manifest_path = staging / MANIFEST_NAME
            manifest_path.unlink(missing_ok=True)  # small: always fetched fresh, then pinned by its sha256
            # Unpinned until it is whole: bounded by MAX_MANIFEST_BYTES, not by anything the server says.
            self._fetch_file(source, MANIFEST_NAME, manifest_path, _Bound(MAX_MANIFEST_BYTES, exact=False))
            got = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
            if got != desired.manifest_sha256:
                raise VerificationError(f"{MANIFEST_NAME}: sha256 {got[:12]}… is not the "
                                        f"{desired.manifest_sha256[:12]}… the desired-model message names")
            try:
                sig = base64.b64decode(desired.manifest_signature, validate=True)
            except ValueError:
                raise VerificationError("manifest_signature is not base64") from None
            (staging / SIGNATURE_NAME).write_text(base64.b64encode(sig).decode() + "\n")
            # Pinned now: its sizes bound the files. read_manifest has checked every entry (a relative path inside
            # the artifact, a non-negative integer size, a sha256), so each can be used as it stands.
            manifest = read_manifest(staging)
            for rel, info in sorted(manifest.files.items()):
                dest = staging / PurePosixPath(rel)
                dest.parent.mkdir(parents=True, exist_ok=True)
                self._fetch_file(source, rel, dest, _Bound(int(info["size"]), exact=True))

    def _fetch_file(self, source: _Source, rel: str, dest: Path, bound: _Bound) -> None:
        """Fetch one file into `dest`, resuming a partial one, never past `bound` nor `source`'s deadline."""
        import grpc

        for attempt in range(1, self.config.attempts + 1):
            offset = dest.stat().st_size if dest.exists() else 0
            if offset > bound.limit:
                dest.unlink()  # longer than allowed (a leftover): start over
                offset = 0
            if bound.exact and offset == bound.limit:
                return
            try:
                _stream(source, rel, dest, offset, bound, min(self.config.call_timeout_s, source.left(rel)))
                return
            except grpc.RpcError as exc:
                code = exc.code().name if exc.code() else "UNKNOWN"
                source.left(rel)  # DownloadRefusedError when the stream ended at the install's deadline
                if code not in _TRANSIENT or attempt == self.config.attempts:
                    raise UserError(f"FetchModel {source.name} {source.version} {rel}: {code} "
                                    f"{exc.details()}") from None
                log.warning("FetchModel %s interrupted (%s) at %d bytes; resuming", rel, code,
                            dest.stat().st_size if dest.exists() else 0)
                time.sleep(min(self.config.backoff_s * 2 ** (attempt - 1), source.left(rel)))


def _dir_name(desired: DesiredModel, *, with_sha: bool) -> str:
    base = f"{desired.name}-{desired.model_version}"
    return f"{base}-{desired.manifest_sha256[:12]}" if with_sha else base


def _same_path(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


@dataclass(frozen=True)
class _Source:
    """One install's FetchModel server: the stub, what to fetch, the token metadata and the shared deadline."""

    stub: EscalationServiceStub
    name: str
    version: str
    metadata: tuple[tuple[str, str], ...]
    deadline: float  # time.monotonic() by which every file must be in
    timeout_s: float  # the deadline's length, for the message

    def left(self, rel: str) -> float:
        """Seconds left before the deadline; DownloadRefusedError when none are."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DownloadRefusedError(f"FetchModel {self.name} {self.version}: the download overran its "
                                       f"{self.timeout_s:g} s deadline (at {rel}); refused")
        return left


@dataclass(frozen=True)
class _Bound:
    limit: int  # bytes the file may have at most
    exact: bool  # True: the manifest's size, which the chunks' total_size must state; False: an upper bound

    def describe(self) -> str:
        return "the manifest lists" if self.exact else "a manifest may have (MAX_MANIFEST_BYTES)"


def _stream(source: _Source, rel: str, dest: Path, offset: int, bound: _Bound, timeout: float) -> None:
    """One FetchModel stream from `offset`, appended to `dest`; every chunk is checked before it is written."""
    from proto.asr.v1 import asr_pb2

    request = asr_pb2.ModelRequest(name=source.name, version=source.version, file=rel, offset=offset)
    call = source.stub.FetchModel(request, timeout=timeout, metadata=source.metadata)
    try:
        with dest.open("ab") as f:
            announced: int | None = None
            for chunk in call:
                announced = _check_chunk(rel, chunk, f.tell(), bound, announced)
                f.write(chunk.data)
            f.flush()
            os.fsync(f.fileno())
    finally:
        call.cancel()  # a refused stream is not read on: the server stops sending


def _check_chunk(rel: str, chunk: asr_pb2.ModelChunk, pos: int, bound: _Bound, announced: int | None) -> int:
    """Refuse (DownloadRefusedError) a chunk that is not the next piece of `rel` within `bound`; returns the
    total_size it states, which every later chunk of the stream must repeat."""
    if chunk.file and chunk.file != rel:
        raise DownloadRefusedError(f"{rel}: the server sent {chunk.file!r} instead; refused")
    if chunk.offset != pos:
        raise DownloadRefusedError(f"{rel}: the server sent a chunk at offset {chunk.offset}, expected {pos}; "
                                   f"refused")
    total = int(chunk.total_size)
    if bound.exact and total != bound.limit:
        raise DownloadRefusedError(f"{rel}: the server announces total_size {total}, the manifest lists "
                                   f"{bound.limit} bytes; refused")
    if announced is not None and total != announced:
        raise DownloadRefusedError(f"{rel}: the server changed total_size from {announced} to {total} "
                                   f"mid-stream; refused")
    end = pos + len(chunk.data)
    if end > bound.limit:
        raise DownloadRefusedError(f"{rel}: the server sent more than the {bound.limit} bytes "
                                   f"{bound.describe()}; refused")
    if end > total:
        raise DownloadRefusedError(f"{rel}: the server sent more bytes than the total_size {total} it "
                                   f"announced; refused")
    return total
