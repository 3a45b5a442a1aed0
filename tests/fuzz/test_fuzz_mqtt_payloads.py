"""Fuzz every MQTT payload schema (issue 13): what the broker, a rogue publisher or a replaying attacker can put
on a topic.

- Desired state (config, model, tombstones) through the device's Reconciler, as sequences: validly signed
  messages at random versions and scopes mixed with replays, empty payloads, foreign fleets and devices, wrong
  keys and mutated JSON. Invariants: nothing raises; a rejection is a NACK with a bounded reason; a scope's
  version mark never goes down; only messages signed by the operator and newer than the mark are accepted.
- What devices send (DeviceState, Ack) through the parser fleetctl's watcher and store use: a valid message or
  a UserError, nothing else.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from edge_node.core.desired_state import Reconciler, scope_key
from shared.errors import UserError
from shared.fleet_schema import (
    MAX_REASON_CHARS,
    Ack,
    ConfigParams,
    DesiredConfig,
    DesiredModel,
    DeviceState,
    FetchInfo,
    Tombstone,
    parse_payload,
)
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.strategies import hostile_text, json_values, mutated_json

pytestmark = [pytest.mark.fuzz]

KEY, ROGUE = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
FLEET, DEVICE = "lab", "dev1"

PARAMS = st.fixed_dictionaries({}, optional={
    "beam_size": st.integers(-2, 20),
    "escalation_budget_fraction": st.floats(-1, 2, allow_nan=False),
    "prompt_words": st.lists(hostile_text(70), max_size=4),
    "threads": st.integers(0, 100),
})


@st.composite
def desired(draw: st.DrawFn, kind: str, operator: Ed25519PrivateKey = KEY) -> tuple[bool, bytes, bool]:
    """(device scope, payload, signed by `operator` for this device and scope)."""
    device_scope = draw(st.booleans())
    fleet = draw(st.sampled_from([FLEET, FLEET, FLEET, "other"]))
    device = (draw(st.sampled_from([DEVICE, DEVICE, "dev2"])) if device_scope
              else draw(st.sampled_from([None, None, None, DEVICE])))
    version = draw(st.integers(1, 12))  # 0 and negatives come from the mutations
    form = draw(st.sampled_from(["message", "message", "tombstone"]))
    if form == "tombstone":
        tomb_kind = draw(st.sampled_from([kind, kind, "config", "model"]))
        msg: Any = Tombstone(fleet=fleet, device=device, version=version, kind=tomb_kind)
    elif kind == "config":
        try:
            params = ConfigParams.model_validate(draw(PARAMS))
        except ValueError:
            params = ConfigParams()
        msg = DesiredConfig(fleet=fleet, device=device, version=version, params=params)
    else:
        mv = draw(st.sampled_from(["1", "2", "3"]))
        msg = DesiredModel(fleet=fleet, device=device, version=version, name="tiny.en-int8", model_version=mv,
                           manifest_sha256="0" * 64, size=1, manifest_signature="c2ln",
                           fetch=FetchInfo(name="tiny.en-int8", version=mv))
    key = draw(st.sampled_from([operator, operator, operator, ROGUE, None]))
    signed = msg.signed(key) if key else msg
    raw = signed.to_json()
    how = draw(st.sampled_from(["as is", "as is", "as is", "mutated", "empty"]))
    if how == "empty":
        return device_scope, b"", False
    if how == "mutated":
        mutant = draw(mutated_json(json.loads(raw)))
        return device_scope, mutant, False
    good = key is operator and fleet == FLEET and device == (DEVICE if device_scope else None)
    good = good and getattr(msg, "kind", kind) == kind
    return device_scope, raw, good


def _version(payload: bytes) -> int | None:
    try:
        doc = json.loads(payload)
        return int(doc["version"]) if isinstance(doc, dict) else None
    except (ValueError, KeyError, TypeError):
        return None


def _mutant_is_valid(payload: bytes) -> bool:
    """A mutation may leave a message valid (an unchanged field); it is then judged like any other."""
    try:
        json.loads(payload)
    except ValueError:
        return False
    return True


@fuzz_settings
@given(steps=st.lists(st.sampled_from(["config", "model"]).flatmap(
    lambda k: st.tuples(st.just(k), desired(k))), min_size=1, max_size=16))
def test_desired_state_sequences(steps: list[tuple[str, tuple[bool, bytes, bool]]]) -> None:
    rec = Reconciler(FLEET, DEVICE, KEY.public_key(), clock=lambda: 1.0)
    for kind, (device_scope, payload, good) in steps:
        key = scope_key(kind, device_scope)  # type: ignore[arg-type]
        before = rec.marks.get(key)
        receive = rec.receive_config if kind == "config" else rec.receive_model
        out = receive(device_scope, payload)
        after = rec.marks.get(key)
        if before is not None:
            assert after is not None and after.version >= before.version, "a mark went down"
        if out.ack is not None:
            assert len(out.ack.reason) <= MAX_REASON_CHARS
            if not out.ack.accepted:
                assert out.ack.reason
        moved = after != before
        if moved:  # accepted: signed by the operator, addressed here, newer than the mark
            assert good or _mutant_is_valid(payload), payload[:200]
            version = _version(payload)
            assert version is not None and (before is None or version > before.version)
        if not payload:
            assert not out.changed and out.ack is None
        # The effective params are always valid ones, whatever happened.
        ConfigParams.model_validate(rec.effective_params().model_dump(exclude_none=True))


def _state_doc() -> dict[str, Any]:
    return json.loads(DeviceState(fleet=FLEET, device=DEVICE, online=True, last_seen=1.0).to_json())


def _ack_doc() -> dict[str, Any]:
    return json.loads(Ack(fleet=FLEET, device=DEVICE, kind="config", version=1, accepted=True, at=1.0).to_json())


@fuzz_settings
@given(payload=st.one_of(mutated_json(_state_doc()), mutated_json(_ack_doc()), st.binary(max_size=256),
                         json_values().map(lambda v: json.dumps(v).encode())),
       cls=st.sampled_from([DeviceState, Ack]))
def test_device_reports(payload: bytes, cls: type[DeviceState] | type[Ack]) -> None:
    try:
        msg = parse_payload(cls, payload)
    except UserError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert msg.fleet and msg.device  # names pass the topic-name pattern
    assert isinstance(msg.to_json(), bytes)
