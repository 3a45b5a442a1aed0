"""Reconcile desired-state messages with what a device runs. Pure logic: no MQTT, no files, no threads.

The device keeps, per kind (config, model), the last accepted message of each scope (fleet-wide and its own
override), and per kind and scope a high-water mark: the highest version accepted there and the digest of that
message. A message is accepted when it parses, is addressed to this device, scope and kind, carries a valid
operator signature and a version above the scope's mark. Anything else is rejected with a reason, and the
previous state stays in force. The message that set the mark, delivered again (retained messages after every
reconnect), is a duplicate: nothing changes and no second ack is sent.

Clearing a scope is a signed `Tombstone`, which raises the mark like any message: the mark outlives the clear,
so an older message cannot be replayed after it (the adapter persists the marks, see `marks_to_doc`, so they
outlive a restart too). An empty payload, which is what a broker shows after a retained message is deleted and
which carries neither signature nor version, changes nothing.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.errors import UserError
from shared.fleet_schema import (
    Ack,
    ConfigParams,
    DesiredConfig,
    DesiredModel,
    Kind,
    Tombstone,
    clip_reason,
    parse_desired,
    peek_version,
)

M = TypeVar("M", DesiredConfig, DesiredModel)
EMPTY_IGNORED = ("empty payload ignored (a deleted retained message: unsigned and unversioned, it changes "
                 "nothing; a scope is cleared with a signed tombstone)")


class ParamsTarget(Protocol):
    """What the edge engine implements to receive live parameters. Must be quick and must not block.

    It may raise to refuse them (parameters this engine cannot run), and then must leave the ones in force
    untouched: the agent NACKs the message with the error and keeps (and keeps persisted) the previous config.
    """

    def apply_params(self, params: ConfigParams) -> None: ...


class ParamsBox:
    """A ParamsTarget that holds the current parameters as one immutable reference.

    The engine calls `current()` once at the start of each segment and uses that object for the whole
    segment; a swap under the lock is atomic, so a segment never sees half of an update and the next one
    sees all of it.
    """

    def __init__(self, initial: ConfigParams | None = None) -> None:
        self._lock = threading.Lock()
        self._params = initial or ConfigParams()
        self._generation = 0

    def apply_params(self, params: ConfigParams) -> None:
        with self._lock:
            self._params = params
            self._generation += 1

    def current(self) -> ConfigParams:
        with self._lock:
            return self._params

    @property
    def generation(self) -> int:
        with self._lock:
            return self._generation


# ---------------------------------------------------------------------------------------------- high-water marks


def scope_key(kind: Kind, device_scope: bool) -> str:
    return f"{kind}/{'device' if device_scope else 'fleet'}"


SCOPE_KEYS = tuple(scope_key(k, d) for k in ("config", "model") for d in (False, True))


@dataclass(frozen=True)
class Mark:
    """One scope's high-water mark: the highest version accepted there and the digest of that message (which
    may be a tombstone), so that its own re-delivery is told apart from another message with its version."""

    version: int
    digest: str


def digest_of(msg: DesiredConfig | DesiredModel | Tombstone) -> str:
    return hashlib.sha256(msg.signed_bytes() + b"\n" + (msg.signature or "").encode()).hexdigest()


def marks_to_doc(marks: Mapping[str, Mark]) -> dict[str, dict[str, Any]]:
    """The marks as JSON-ready data (the adapter persists it in the state dir)."""
    return {k: {"version": m.version, "digest": m.digest} for k, m in sorted(marks.items())}


def marks_from_doc(doc: Any) -> dict[str, Mark]:
    """What `marks_to_doc` made, back; ValueError naming the problem for anything else."""
    if not isinstance(doc, dict):
        raise ValueError("high-water marks: expected a JSON object")
    out: dict[str, Mark] = {}
    for key, m in doc.items():
        if key not in SCOPE_KEYS:
            raise ValueError(f"high-water marks: unknown scope {key!r} (expected one of {', '.join(SCOPE_KEYS)})")
        version = m.get("version") if isinstance(m, dict) else None
        digest = m.get("digest") if isinstance(m, dict) else None
        if not isinstance(version, int) or isinstance(version, bool) or version < 1 or not isinstance(digest, str):
            raise ValueError(f"high-water mark {key}: expected {{version: integer >= 1, digest: string}}, got {m!r}")
        out[key] = Mark(version, digest)
    return out


# ---------------------------------------------------------------------------------------------- reconciler


@dataclass(frozen=True)
class Outcome:
    """What one message led to: an ack to send (None for duplicates and ignored payloads), whether the effective
    state changed, whether it was a tombstone that cleared its scope, and why it was ignored (for the log)."""

    ack: Ack | None
    changed: bool = False
    cleared: bool = False
    ignored: str = ""


@dataclass(frozen=True)
class ConfigSnapshot:
    """The config side of a Reconciler (messages in force and their marks), to put back when an apply fails."""

    fleet: DesiredConfig | None
    device: DesiredConfig | None
    marks: tuple[tuple[str, Mark], ...]


@dataclass
class _Scopes(Generic[M]):
    fleet: M | None = None
    device: M | None = None

    def get(self, device_scope: bool) -> M | None:
        return self.device if device_scope else self.fleet

    def put(self, device_scope: bool, msg: M | None) -> None:
        if device_scope:
            self.device = msg
        else:
            self.fleet = msg


@dataclass
class Reconciler:
    fleet: str
    device: str
    pubkey: Ed25519PublicKey | None
    require_signed: bool = True
    config: _Scopes[DesiredConfig] = field(default_factory=_Scopes)
    model: _Scopes[DesiredModel] = field(default_factory=_Scopes)
    marks: dict[str, Mark] = field(default_factory=dict)  # scope_key -> Mark; the adapter persists them
    clock: Callable[[], float] = field(kw_only=True)  # the adapter's wall clock (time.time): stamps each ack

    # ------------------------------------------------------------------ helpers

    def _ack(self, kind: str, version: int | None, accepted: bool, reason: str = "") -> Ack:
        return Ack.model_validate({
            "fleet": self.fleet, "device": self.device, "kind": kind, "version": version,
            "accepted": accepted, "reason": clip_reason(reason), "at": self.clock(),
        })

    def reject(self, kind: str, version: int | None, reason: str) -> Ack:
        """A NACK (the reason cut to the Ack limit), for failures the adapter meets itself."""
        return self._ack(kind, version, False, reason)

    def _check(self, kind: Kind, msg: DesiredConfig | DesiredModel | Tombstone, device_scope: bool) -> None:
        if isinstance(msg, Tombstone) and msg.kind != kind:
            raise UserError(f"a {msg.kind} tombstone received on a {kind} topic")
        if msg.fleet != self.fleet:
            raise UserError(f"addressed to fleet {msg.fleet!r}, this device is in {self.fleet!r}")
        want = self.device if device_scope else None
        if msg.device != want:
            raise UserError(f"addressed to device {msg.device!r} but received on the {want or 'fleet'} topic")
        if self.pubkey is not None:
            msg.verify(self.pubkey)
        elif self.require_signed:
            raise UserError("no operator public key configured, cannot check the signature")

    def _receive(
        self, kind: Kind, cls: type[M], scopes: _Scopes[M], device_scope: bool, payload: bytes
    ) -> Outcome:
        if not payload:
            return Outcome(None, ignored=EMPTY_IGNORED)
        try:
            msg = parse_desired(cls, payload)
            self._check(kind, msg, device_scope)
        except UserError as exc:
            return Outcome(self._ack(kind, peek_version(payload), False, str(exc)))
        in_force = None if isinstance(msg, Tombstone) else msg
        key, digest = scope_key(kind, device_scope), digest_of(msg)
        mark = self.marks.get(key)
        if mark is not None and msg.version <= mark.version:
            if msg.version == mark.version and digest == mark.digest:
                if scopes.get(device_scope) == in_force:
                    return Outcome(None)  # duplicate delivery of a retained message
                # The message that set the mark, while this process does not hold it (the persisted copy at
                # boot, or its retained re-delivery): back in force, without a second ack.
                scopes.put(device_scope, in_force)
                return Outcome(None, changed=True, cleared=in_force is None)
            where = f"the {'device' if device_scope else 'fleet'} {kind} is at v{mark.version}"
            reason = (f"version {msg.version} reused with other content ({where})" if msg.version == mark.version
                      else f"stale version {msg.version}: {where}, older messages stay refused after a clear")
            return Outcome(self._ack(kind, msg.version, False, reason))
        self.marks[key] = Mark(msg.version, digest)
        scopes.put(device_scope, in_force)
        return Outcome(self._ack(kind, msg.version, True), changed=True, cleared=in_force is None)

    # ------------------------------------------------------------------ config

    def receive_config(self, device_scope: bool, payload: bytes) -> Outcome:
        return self._receive("config", DesiredConfig, self.config, device_scope, payload)

    def receive_config_applying(
        self, device_scope: bool, payload: bytes, apply: Callable[[ConfigParams], None]
    ) -> Outcome:
        """`receive_config`, then `apply(effective_params())` when they changed. If `apply` raises, the new
        message never was in force: the previous messages and marks are restored and it is NACKed with the
        error (the same message is refused again, and a fixed engine or a newer message can still succeed)."""
        saved = self.snapshot()
        out = self.receive_config(device_scope, payload)
        if not out.changed:
            return out
        try:
            apply(self.effective_params())
        except Exception as exc:  # whatever the engine raises: the device must keep working on the old params
            self.restore(saved)
            version = out.ack.version if out.ack is not None else peek_version(payload)
            return Outcome(self._ack("config", version, False, f"cannot apply the config: {exc}"))
        return out

    def snapshot(self) -> ConfigSnapshot:
        config_marks = tuple((k, m) for k, m in self.marks.items() if k.startswith("config/"))
        return ConfigSnapshot(self.config.fleet, self.config.device, config_marks)

    def restore(self, snap: ConfigSnapshot) -> None:
        self.config.fleet, self.config.device = snap.fleet, snap.device
        self.marks = {**{k: m for k, m in self.marks.items() if not k.startswith("config/")}, **dict(snap.marks)}

    def effective_params(self) -> ConfigParams:
        params = ConfigParams()
        if self.config.fleet is not None:
            params = self.config.fleet.params
        if self.config.device is not None:
            params = self.config.device.params.merged_over(params)
        return params

    @property
    def config_version(self) -> int:
        """The highest config version accepted in either scope (a tombstone's included)."""
        marks = tuple(self.marks.items())  # a copy: the agent's state may be read from another thread
        return max((m.version for k, m in marks if k.startswith("config/")), default=0)

    # ------------------------------------------------------------------ model

    def receive_model(self, device_scope: bool, payload: bytes) -> Outcome:
        out = self._receive("model", DesiredModel, self.model, device_scope, payload)
        # Acceptance of a model message is only acknowledged after the install: drop the early ack. A tombstone
        # installs nothing, so it is acknowledged now.
        if out.ack is not None and out.ack.accepted and not out.cleared:
            return Outcome(None, True)
        return out

    def desired_model(self) -> DesiredModel | None:
        """The newest of the fleet-wide and the per-device desired model (canaries get theirs first)."""
        cands = [m for m in (self.model.fleet, self.model.device) if m is not None]
        return max(cands, key=lambda m: m.version) if cands else None

    def model_ack(self, desired: DesiredModel, accepted: bool, reason: str = "") -> Ack:
        ack = self._ack("model", desired.version, accepted, reason)
        return ack.model_copy(update={"model_version": desired.model_version})

    def unknown_ack(self, reason: str) -> Ack:
        return self._ack("unknown", None, False, reason)
