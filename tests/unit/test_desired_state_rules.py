"""The device's desired-state rules, pure (issue 13, findings 2, 4 and 6): high-water marks per kind and scope,
signed tombstones, empty payloads ignored, prompt words whisper can encode, NACK reasons cut to the Ack limit,
and a config the engine cannot apply rolled back inside the reconciler."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from edge_node.core.desired_state import Reconciler
from shared.fleet_schema import ConfigParams, DesiredConfig, DesiredModel, FetchInfo

KEY = Ed25519PrivateKey.generate()
ACK_LIMIT = 1000


def reconciler(**kw: Any) -> Reconciler:
    return Reconciler("lab", "dev1", KEY.public_key(), clock=lambda: 1.0, **kw)


def config(version: int, device: str | None = None, **params: Any) -> bytes:
    msg = DesiredConfig(fleet="lab", device=device, version=version, params=ConfigParams.model_validate(params))
    return msg.signed(KEY).to_json()


def model(version: int, model_version: str, device: str | None = None) -> bytes:
    msg = DesiredModel(fleet="lab", device=device, version=version, name="scale", model_version=model_version,
                       manifest_sha256="0" * 64, size=1, manifest_signature="c2ln",
                       fetch=FetchInfo(name="scale", version=model_version))
    return msg.signed(KEY).to_json()


def tombstone(version: int, kind: str, device: str | None = None, key: Ed25519PrivateKey | None = KEY) -> bytes:
    from shared.fleet_schema import Tombstone

    msg = Tombstone(fleet="lab", device=device, version=version, kind=kind)  # type: ignore[arg-type]
    return (msg.signed(key) if key else msg).to_json()


@pytest.mark.parametrize("device_scope", [False, True])
def test_an_empty_config_payload_changes_nothing_and_keeps_older_versions_out(device_scope: bool) -> None:
    dev = "dev1" if device_scope else None
    rec = reconciler()
    assert rec.receive_config(device_scope, config(3, dev, beam_size=3)).changed
    assert rec.receive_config(device_scope, config(5, dev, beam_size=5)).changed
    out = rec.receive_config(device_scope, b"")
    assert out.ack is None and not out.changed
    assert rec.effective_params().beam_size == 5 and rec.config_version == 5
    out = rec.receive_config(device_scope, config(3, dev, beam_size=3))
    assert out.ack is not None and not out.ack.accepted and "stale" in out.ack.reason
    assert rec.effective_params().beam_size == 5


def test_an_empty_model_payload_changes_nothing_and_keeps_older_versions_out() -> None:
    rec = reconciler()
    rec.receive_model(False, model(10, "1"))
    rec.receive_model(False, model(11, "2"))
    out = rec.receive_model(False, b"")
    assert out.ack is None and not out.changed
    out = rec.receive_model(False, model(10, "1"))
    assert out.ack is not None and not out.ack.accepted and "stale" in out.ack.reason
    desired = rec.desired_model()
    assert desired is not None and desired.model_version == "2"


def test_a_signed_tombstone_clears_its_scope_and_raises_the_mark() -> None:
    rec = reconciler()
    rec.receive_config(False, config(1, beam_size=2))
    rec.receive_config(True, config(2, "dev1", beam_size=6))
    assert rec.effective_params().beam_size == 6
    out = rec.receive_config(True, tombstone(3, "config", "dev1"))
    assert out.ack is not None and out.ack.accepted and out.ack.version == 3 and out.changed
    assert rec.effective_params().beam_size == 2 and rec.config_version == 3
    assert rec.receive_config(True, tombstone(3, "config", "dev1")).ack is None  # retained re-delivery
    out = rec.receive_config(True, config(2, "dev1", beam_size=6))
    assert out.ack is not None and not out.ack.accepted and "stale" in out.ack.reason
    # Marks are per scope: the fleet scope's is still 1, so a newer fleet message is accepted as usual.
    assert rec.receive_config(False, config(4, beam_size=3)).changed


@pytest.mark.parametrize(("payload", "why"), [
    (lambda: tombstone(9, "model", "dev1"), "model tombstone"),  # a model clear replayed on the config topic
    (lambda: tombstone(9, "config", "dev1", key=None), "unsigned"),
    (lambda: tombstone(9, "config", "dev1", key=Ed25519PrivateKey.generate()), "bad signature"),
    (lambda: tombstone(9, "config", None), "addressed to device None"),
    (lambda: json.dumps({**json.loads(tombstone(9, "config", "dev1")), "params": {}}).encode(), "params"),
    (lambda: json.dumps({**json.loads(tombstone(9, "config", "dev1")), "cleared": False}).encode(), "cleared"),
])
def test_a_tombstone_is_strict(payload: Any, why: str) -> None:
    rec = reconciler()
    rec.receive_config(True, config(2, "dev1", beam_size=6))
    out = rec.receive_config(True, payload())
    assert out.ack is not None
    assert not out.ack.accepted and why in out.ack.reason, out.ack.reason
    assert rec.effective_params().beam_size == 6


def test_a_model_tombstone_is_acked_at_once_and_falls_back_to_the_fleet_model() -> None:
    rec = reconciler()
    rec.receive_model(False, model(4, "1"))
    assert rec.receive_model(True, model(5, "2", "dev1")).ack is None  # acked after the install
    assert rec.desired_model().model_version == "2"  # type: ignore[union-attr]
    out = rec.receive_model(True, tombstone(6, "model", "dev1"))
    assert out.ack is not None and out.ack.accepted and out.ack.version == 6  # nothing to install: acked now
    assert rec.desired_model().model_version == "1"  # type: ignore[union-attr]
    assert not rec.receive_model(True, model(5, "2", "dev1")).ack.accepted  # type: ignore[union-attr]


def test_marks_persist_and_the_marked_message_is_adopted_silently_after_a_restart() -> None:
    from edge_node.core.desired_state import marks_from_doc, marks_to_doc

    rec = reconciler()
    rec.receive_config(False, config(5, beam_size=5))
    rec.receive_model(True, tombstone(7, "model", "dev1"))
    doc = json.loads(json.dumps(marks_to_doc(rec.marks)))  # what the agent writes to its state dir
    again = reconciler(marks=marks_from_doc(doc))
    assert again.config_version == 5
    out = again.receive_config(False, config(5, beam_size=5))  # the persisted (or retained) v5 itself
    assert out.ack is None and out.changed and again.effective_params().beam_size == 5
    assert again.receive_config(False, config(5, beam_size=5)).ack is None  # and again: a duplicate
    other = again.receive_config(False, config(5, beam_size=9))
    assert other.ack is not None and not other.ack.accepted and "reused" in other.ack.reason
    assert not again.receive_config(False, config(4, beam_size=4)).ack.accepted  # type: ignore[union-attr]
    assert again.receive_model(True, tombstone(7, "model", "dev1")).ack is None
    assert not again.receive_model(True, model(6, "1", "dev1")).ack.accepted  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="high-water"):
        marks_from_doc({"config/fleet": {"version": "five"}})


def test_a_config_the_engine_cannot_apply_leaves_the_previous_one_and_its_mark() -> None:
    rec = reconciler()
    seen: list[ConfigParams] = []
    rec.receive_config_applying(False, config(1, beam_size=3), seen.append)

    def refuse(params: ConfigParams) -> None:
        raise RuntimeError("decoder cannot run beam 7")

    out = rec.receive_config_applying(False, config(2, beam_size=7), refuse)
    assert out.ack is not None and not out.ack.accepted and "beam 7" in out.ack.reason and not out.changed
    assert rec.effective_params().beam_size == 3 and rec.config_version == 1
    # The refused message never raised the mark: once the engine can take it, it is accepted.
    out = rec.receive_config_applying(False, config(2, beam_size=7), seen.append)
    assert out.ack is not None and out.ack.accepted and seen[-1].beam_size == 7


@pytest.mark.parametrize("words", [("<|endoftext|>",), ("<|en|>",), ("<|end", "oftext|>"), ("a\x00b",)])
def test_prompt_words_whisper_cannot_encode_are_refused(words: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError, match="prompt"):
        ConfigParams(prompt_words=words)
    out = reconciler().receive_config(False, DesiredConfig(
        fleet="lab", version=1, params=ConfigParams.model_construct(prompt_words=words)).signed(KEY).to_json())
    assert out.ack is not None and not out.ack.accepted and "prompt" in out.ack.reason


def test_ordinary_prompt_words_pass() -> None:
    assert ConfigParams(prompt_words=("Asterisk", "a<b", "c|d", "|>")).prompt_words == ("Asterisk", "a<b", "c|d", "|>")


def test_nack_reasons_are_cut_to_the_ack_limit() -> None:
    rec = reconciler()
    desired = DesiredModel.model_validate_json(model(1, "1", "dev1"))
    ack = rec.model_ack(desired, False, "self-test failed: " + "x" * 3000)
    assert len(ack.reason) == ACK_LIMIT and ack.reason.endswith("…") and ack.reason.startswith("self-test failed")
    doc = json.loads(config(1, beam_size=2))
    doc["params"]["k" * 2000] = 1
    out = rec.receive_config(False, json.dumps(doc).encode())
    assert out.ack is not None and not out.ack.accepted and len(out.ack.reason) <= ACK_LIMIT
    assert out.ack.reason.startswith("DesiredConfig: params.kkk")
