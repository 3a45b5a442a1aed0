"""Reconcile desired-state messages with what a device runs. Pure logic: no MQTT, no files, no threads.

The device keeps, per kind (config, model), the last accepted message of each scope (fleet-wide and its own
override). A message is accepted when it parses, is addressed to this device and scope, carries a valid
operator signature and a version not lower than the one it replaces. Anything else is rejected with a
reason, and the previous state stays in force. Re-delivery of the same message (retained messages after
every reconnect) is recognised as a duplicate: nothing changes and no second ack is sent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.errors import UserError
from shared.fleet_schema import Ack, ConfigParams, DesiredConfig, DesiredModel, parse_payload, peek_version

M = TypeVar("M", DesiredConfig, DesiredModel)


class ParamsTarget(Protocol):
    """What the edge engine implements to receive live parameters. Must be quick and must not block."""

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


@dataclass(frozen=True)
class Outcome:
    """What one message led to: an ack to send (None for duplicates), whether the effective state changed."""

    ack: Ack | None
    changed: bool = False


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
    clock: Callable[[], float] = field(kw_only=True)  # the adapter's wall clock (time.time): stamps each ack

    # ------------------------------------------------------------------ helpers

    def _ack(self, kind: str, version: int | None, accepted: bool, reason: str = "") -> Ack:
        return Ack.model_validate({
            "fleet": self.fleet, "device": self.device, "kind": kind, "version": version,
            "accepted": accepted, "reason": reason, "at": self.clock(),
        })

    def _check(self, msg: DesiredConfig | DesiredModel, device_scope: bool) -> None:
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
        self, kind: str, cls: type[M], scopes: _Scopes[M], device_scope: bool, payload: bytes
    ) -> Outcome:
        if not payload:  # an operator cleared a retained override: fall back to the fleet-wide message
            changed = scopes.get(device_scope) is not None
            scopes.put(device_scope, None)
            return Outcome(None, changed)
        try:
            msg = parse_payload(cls, payload)
            self._check(msg, device_scope)
        except UserError as exc:
            return Outcome(self._ack(kind, peek_version(payload), False, str(exc)))
        old = scopes.get(device_scope)
        if old is not None:
            if msg.version < old.version:
                reason = f"stale version {msg.version} < {old.version}"
                return Outcome(self._ack(kind, msg.version, False, reason))
            if msg.version == old.version:
                if msg == old:
                    return Outcome(None, False)  # duplicate delivery of a retained message
                reason = f"version {msg.version} reused with other content"
                return Outcome(self._ack(kind, msg.version, False, reason))
        scopes.put(device_scope, msg)
        return Outcome(self._ack(kind, msg.version, True), True)

    # ------------------------------------------------------------------ config

    def receive_config(self, device_scope: bool, payload: bytes) -> Outcome:
        return self._receive("config", DesiredConfig, self.config, device_scope, payload)

    def effective_params(self) -> ConfigParams:
        params = ConfigParams()
        if self.config.fleet is not None:
            params = self.config.fleet.params
        if self.config.device is not None:
            params = self.config.device.params.merged_over(params)
        return params

    @property
    def config_version(self) -> int:
        return max((m.version for m in (self.config.fleet, self.config.device) if m is not None), default=0)

    # ------------------------------------------------------------------ model

    def receive_model(self, device_scope: bool, payload: bytes) -> Outcome:
        out = self._receive("model", DesiredModel, self.model, device_scope, payload)
        # Acceptance of a model message is only acknowledged after the install: drop the early ack.
        if out.ack is not None and out.ack.accepted:
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
