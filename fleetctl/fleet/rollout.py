"""Publishing desired state, and the staged model rollout with automatic halt and rollback.

Rollout state machine (recorded in Redis under `fleet:{fleet}:rollout`)::

    canary ──all canary acked, failures <= limit──▶ fleet ──all online acked, failures <= limit──▶ done
      │ failures > limit (NACK, offline, no ack in time)        │ failures > limit
      ▼                                                         ▼
    rolled_back  ◀──────────── previous model republished (new version) to the same topics

Every desired-state message gets a new fleet-wide version from Redis (INCR) and is signed by the operator key,
so the device orders them, and a rollback is simply a newer message naming the older model. Clearing a retained
topic is a signed `Tombstone` with a new version too, never an empty payload: devices ignore empty payloads (anyone
who can delete a retained message can produce one), and keep refusing every version at or below a tombstone's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from fleetctl.fleet.mqtt_io import BrokerSettings, collect_retained, connect, publish
from fleetctl.fleet.store import FleetStore
from fleetctl.fleet.watcher import Watcher
from shared.errors import UserError
from shared.fleet_schema import (
    Ack,
    ConfigParams,
    DesiredConfig,
    DesiredModel,
    DeviceState,
    FetchInfo,
    Kind,
    Tombstone,
    all_states_topic,
    check_name,
    device_config_topic,
    device_model_topic,
    fleet_config_topic,
    fleet_model_topic,
    parse_payload,
)
from shared.manifest import SIGNATURE_NAME, verify_artifact
from shared.mqtt import Client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RolloutPolicy:
    canary_share: float = 0.1
    then_all: bool = True
    max_failure_share: float = 0.0  # halt when MORE than this share of a phase fails (0: any failure)
    ack_timeout_s: float = 120.0
    grpc_target: str | None = None  # FetchModel server named in the message (None: the devices' default)
    progress: bool = True


@dataclass
class PhaseResult:
    targets: list[str]
    accepted: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- config


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """`thresholds.confidence=0.6 prompt_words=alpha,beta vad.threshold=null` -> nested updates. `prompt_words`
    and `hotwords` take a comma-separated list (or a JSON list, for a phrase with a comma in it)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{pair!r}: expected KEY=VALUE (e.g. thresholds.confidence=0.6)")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        if key in ("prompt_words", "hotwords") and isinstance(value, str):
            value = [w.strip() for w in value.split(",") if w.strip()]
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"{key}: {p} is not a group")
        node[leaf] = value
    return out


def apply_updates(base: ConfigParams, updates: dict[str, Any]) -> ConfigParams:
    doc = base.model_dump(mode="json", exclude_none=True)

    def merge(dst: dict[str, Any], src: dict[str, Any], path: str) -> None:
        for k, v in src.items():
            if isinstance(v, dict):
                sub = dst.get(k)
                dst[k] = sub if isinstance(sub, dict) else {}
                merge(dst[k], v, f"{path}{k}.")
            elif v is None:
                dst.pop(k, None)  # KEY=null: back to inheriting
            else:
                dst[k] = v

    merge(doc, updates, "")
    try:
        return ConfigParams.model_validate(doc)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise UserError(f"invalid config {'.'.join(str(p) for p in e['loc'])}: {e['msg']}") from None


def publish_config(settings: BrokerSettings, store: FleetStore, key: Ed25519PrivateKey,
                   updates: dict[str, Any], device: str | None = None) -> DesiredConfig:
    if device is not None:
        check_name(device, "device id")
    current = store.config(device)
    params = apply_updates(current.params if current else ConfigParams(), updates)
    return _publish_config_params(settings, store, key, params, device)


def _publish_retained(settings: BrokerSettings, topic: str, payload: bytes) -> None:
    client = connect(settings, f"fleetctl-config-{time.monotonic_ns() % 10**9}")
    try:
        publish(client, topic, payload, retain=True)
    finally:
        client.disconnect()
        client.loop_stop()


def _config_topic(fleet: str, device: str | None) -> str:
    return device_config_topic(fleet, device) if device else fleet_config_topic(fleet)


def _publish_config_params(settings: BrokerSettings, store: FleetStore, key: Ed25519PrivateKey,
                           params: ConfigParams, device: str | None, push_history: bool = True) -> DesiredConfig:
    msg = DesiredConfig(fleet=store.fleet, device=device, version=store.next_version(), params=params,
                        issued_at=time.time())
    msg = msg.signed(key)
    _publish_retained(settings, _config_topic(store.fleet, device), msg.to_json())
    store.save_config(msg, push_history=push_history)
    return msg


def rollback_config(settings: BrokerSettings, store: FleetStore, key: Ed25519PrivateKey) -> DesiredConfig:
    previous = store.pop_config_history()
    if previous is None:
        raise UserError(f"fleet {store.fleet}: no earlier fleet config to roll back to")
    # The config in force is not pushed: rolling back again goes further back, not to and fro.
    return _publish_config_params(settings, store, key, previous.params, None, push_history=False)


def make_tombstone(store: FleetStore, key: Ed25519PrivateKey, kind: Kind, device: str | None) -> Tombstone:
    """A signed clear of one topic, with the next fleet version: above everything published there before."""
    return Tombstone(fleet=store.fleet, device=device, version=store.next_version(), kind=kind,
                     issued_at=time.time()).signed(key)


def clear_config(settings: BrokerSettings, store: FleetStore, key: Ed25519PrivateKey,
                 device: str | None = None) -> Tombstone:
    """Clear a device's override (it inherits the fleet config again) or, with None, the fleet-wide config (the
    engine defaults apply): a retained signed tombstone replaces the message on the topic."""
    if device is not None:
        check_name(device, "device id")
    tomb = make_tombstone(store, key, "config", device)
    _publish_retained(settings, _config_topic(store.fleet, device), tomb.to_json())
    store.clear_config(device)
    return tomb


# ---------------------------------------------------------------------------------------------- model


def desired_from_artifact(directory: Path, key: Ed25519PrivateKey, fleet: str,
                          grpc_target: str | None) -> DesiredModel:
    """Check the artifact against the operator key before anything is published; describe it."""
    manifest = verify_artifact(directory, key.public_key())
    sig = (directory / SIGNATURE_NAME).read_text().strip()
    return DesiredModel(
        fleet=fleet, version=1, name=manifest.name, model_version=manifest.version,
        manifest_sha256=manifest.sha256, size=manifest.total_bytes, manifest_signature=sig,
        fetch=FetchInfo(grpc_target=grpc_target, name=manifest.name, version=manifest.version),
        issued_at=time.time(),
    )


def _device_states(settings: BrokerSettings, store: FleetStore) -> dict[str, DeviceState]:
    states: dict[str, DeviceState] = {}
    for rec in store.devices().values():
        if "state" in rec:
            states[rec["state"].device] = rec["state"]
    for payload in collect_retained(settings, all_states_topic(store.fleet)).values():
        try:
            st = parse_payload(DeviceState, payload)
        except UserError:
            continue
        states[st.device] = st  # the broker's retained state is the freshest
    return states


def pick_canary(devices: list[str], share: float, salt: str) -> list[str]:
    n = max(1, math.ceil(share * len(devices)))
    return sorted(devices, key=lambda d: hashlib.sha256(f"{salt}/{d}".encode()).hexdigest())[:n]


class Rollout:
    def __init__(self, settings: BrokerSettings, store: FleetStore, key: Ed25519PrivateKey,
                 policy: RolloutPolicy) -> None:
        self.settings, self.store, self.key, self.policy = settings, store, key, policy
        self.record: dict[str, Any] = {}

    def _publish_model(self, client: Client, template: DesiredModel | None, device: str | None) -> int | None:
        fleet = self.store.fleet
        topic = device_model_topic(fleet, device) if device else fleet_model_topic(fleet)
        if template is None:  # clear the retained desired model; nothing to install, so nothing waited for
            publish(client, topic, make_tombstone(self.store, self.key, "model", device).to_json(), retain=True)
            return None
        version = self.store.next_version()
        msg = template.model_copy(update={"version": version, "device": device, "fleet": self.store.fleet,
                                          "signature": None}).signed(self.key)
        publish(client, topic, msg.to_json(), retain=True)
        return version

    def _save(self, **changes: Any) -> None:
        self.record.update(changes)
        self.store.save_rollout(self.record)

    def _wait(
        self, watcher: Watcher, phase: str, versions: dict[str, int], targets: list[str]
    ) -> PhaseResult:
        """Wait for each target's ack of its version; stop early once failures pass the limit."""
        from tqdm import tqdm

        res = PhaseResult(targets)
        limit = math.floor(self.policy.max_failure_share * len(targets) + 1e-9)
        deadline = time.monotonic() + self.policy.ack_timeout_s
        pending = set(targets)
        with tqdm(total=len(targets), desc=f"{phase} acks", unit="dev", file=sys.stderr,
                  disable=not self.policy.progress) as bar:
            while pending and len(res.failed) <= limit and time.monotonic() < deadline:
                for ev in watcher.events(timeout=min(0.5, max(0.01, deadline - time.monotonic()))):
                    m, dev = ev.message, ev.device
                    mine = isinstance(m, Ack) and m.kind == "model" and m.version == versions.get(dev)
                    if dev in pending and isinstance(m, Ack) and mine:
                        pending.discard(dev)
                        if m.accepted:
                            res.accepted.add(dev)
                        else:
                            res.failed[dev] = f"NACK: {m.reason}"
                        bar.update(1)
                    elif dev in pending and isinstance(m, DeviceState) and not m.online:
                        pending.discard(dev)
                        res.failed[dev] = "went offline"
                        bar.update(1)
                    bar.set_postfix(ok=len(res.accepted), failed=len(res.failed))
                    if not pending or len(res.failed) > limit or time.monotonic() >= deadline:
                        break
        if len(res.failed) <= limit:
            for dev in pending:
                res.failed[dev] = f"no ack within {self.policy.ack_timeout_s:.0f}s"
        return res

    def _halted(self, res: PhaseResult) -> bool:
        return len(res.failed) > self.policy.max_failure_share * len(res.targets) + 1e-9

    def run(self, candidate: DesiredModel) -> dict[str, Any]:
        fleet = self.store.fleet
        states = _device_states(self.settings, self.store)
        online = sorted(d for d, st in states.items() if st.online)
        if not online:
            raise UserError(f"fleet {fleet}: no device is online (nothing to roll out to)")
        previous = self.store.stable_model() or self._retained_fleet_model()
        canary = pick_canary(online, self.policy.canary_share, candidate.model_version)
        self.record = {
            "state": "canary", "candidate": json.loads(candidate.to_json()),
            "previous": json.loads(previous.to_json()) if previous else None,
            "canary": canary, "started": time.time(), "failures": {},
        }
        self._save()
        watcher = Watcher(self.settings, fleet, self.store.r)  # subscribed before publishing: no ack missed
        client = connect(self.settings, f"fleetctl-rollout-{time.monotonic_ns() % 10**9}")
        try:
            versions = {d: self._publish_model(client, candidate, d) or 0 for d in canary}
            self._save(canary_versions=versions)
            res = self._wait(watcher, "canary", versions, canary)
            if self._halted(res):
                return self._rollback(client, watcher, res, previous, canary, fleet_wide=False)
            if not self.policy.then_all:
                self._save(state="canary_done", finished=time.time())
                return self.record
            self._save(state="fleet")
            v = self._publish_model(client, candidate, None) or 0
            targets = sorted(set(online) | {d for d, st in _device_states(self.settings, self.store).items()
                                            if st.online})
            res = self._wait(watcher, "fleet", dict.fromkeys(targets, v), targets)
            if self._halted(res):
                return self._rollback(client, watcher, res, previous, canary, fleet_wide=True)
            for d in canary:  # the fleet-wide message now says the same; drop the per-device ones
                self._publish_model(client, None, d)
            self.store.set_stable_model(candidate)
            self._save(state="done", finished=time.time(), failures=res.failed, acked=len(res.accepted))
            return self.record
        finally:
            watcher.close()
            client.disconnect()
            client.loop_stop()

    def _retained_fleet_model(self) -> DesiredModel | None:
        got = collect_retained(self.settings, fleet_model_topic(self.store.fleet), max_s=1.0)
        for payload in got.values():
            try:
                return parse_payload(DesiredModel, payload)
            except UserError:
                return None
        return None

    def _rollback(self, client: Client, watcher: Watcher, res: PhaseResult, previous: DesiredModel | None,
                  canary: list[str], fleet_wide: bool) -> dict[str, Any]:
        log.warning("halting rollout: %d of %d failed: %s", len(res.failed), len(res.targets),
                    "; ".join(f"{d}: {r}" for d, r in sorted(res.failed.items())[:5]))
        self._save(state="rolling_back", failures=res.failed)
        versions: dict[str, int] = {}
        if fleet_wide:
            v = self._publish_model(client, previous, None)
            versions = dict.fromkeys(res.targets, v) if v else {}
        for d in canary:
            v = self._publish_model(client, previous, d) if not fleet_wide else None
            if not fleet_wide and v:
                versions[d] = v
            if fleet_wide:
                self._publish_model(client, None, d)
        if versions:
            back = self._wait(watcher, "rollback", versions, sorted(versions))
            self.record["rollback_acked"] = len(back.accepted)
        self._save(state="rolled_back", finished=time.time(),
                   rolled_back_to=previous.model_version if previous else None)
        return self.record


def manual_rollback(settings: BrokerSettings, store: FleetStore, key: Ed25519PrivateKey,
                    policy: RolloutPolicy) -> dict[str, Any]:
    rec = store.rollout()
    if rec is None or rec.get("state") == "rolled_back":
        raise UserError(f"fleet {store.fleet}: no rollout to roll back")
    if not rec.get("previous"):
        raise UserError(f"fleet {store.fleet}: the last rollout has no earlier model to return to")
    previous = parse_payload(DesiredModel, json.dumps(rec["previous"]).encode())
    r = Rollout(settings, store, key, policy)
    r.record = rec
    watcher = Watcher(settings, store.fleet, store.r)
    client = connect(settings, f"fleetctl-rollback-{time.monotonic_ns() % 10**9}")
    try:
        online = sorted(d for d, st in _device_states(settings, store).items() if st.online)
        res = PhaseResult(online, failed={"operator": "manual rollback"})
        out = r._rollback(client, watcher, res, previous, list(rec.get("canary", [])), fleet_wide=True)
    finally:
        watcher.close()
        client.disconnect()
        client.loop_stop()
    store.set_stable_model(previous, push_history=False)
    return out
