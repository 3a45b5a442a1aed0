"""Live parameters over MQTT: signed, versioned desired config applied between segments, with no restart."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_node.core.desired_state import ParamsBox
from shared.fleet_schema import (
    ConfigParams,
    DesiredConfig,
    Thresholds,
    device_config_topic,
    fleet_config_topic,
)
from testkit.fleet import FLEET, RecordingEngine
from testkit.wait import wait_until

if TYPE_CHECKING:
    from tests.integration.mqtt_fixtures import FleetEnv

pytest_plugins = ["tests.integration.mqtt_fixtures"]
pytestmark = [pytest.mark.mqtt, pytest.mark.redis]


def test_live_threshold_change_applies_to_the_next_segment(fleet_env: FleetEnv) -> None:
    engine = RecordingEngine()
    acks = fleet_env.listen()
    agent = fleet_env.agent("dev1", engine)
    assert fleet_env.fleetctl("config", "set", "thresholds.confidence=0.5") == 0
    acks.wait_ack("dev1", "config")
    wait_until(lambda: engine.current().thresholds, what="first config applied")

    # A segment loop keeps running (never restarted) while the operator changes the threshold.
    stop = threading.Event()
    seen: list[float | None] = []

    def segments() -> None:
        while not stop.is_set():
            engine.process(0.6)
            seen.append(engine.decisions[-1][1])
            stop.wait(0.005)

    loop = threading.Thread(target=segments)
    loop.start()
    try:
        wait_until(lambda: len(seen) > 20, what="segments under the old threshold")
        assert engine.decisions[-1] == (0.6, 0.5, False)  # 0.6 >= 0.5: handled on the edge
        assert fleet_env.fleetctl("config", "set", "thresholds.confidence=0.7") == 0
        ack = acks.wait_ack("dev1", "config", version=2)
        assert ack.accepted, ack.reason
        n_at_ack = len(seen)
        wait_until(lambda: len(seen) > n_at_ack + 5, what="segments after the change")
    finally:
        stop.set()
        loop.join()
    # Every segment after the ack saw the new threshold, and the switch happened exactly once.
    assert set(seen[n_at_ack:]) == {0.7}
    switches = [i for i in range(1, len(seen)) if seen[i] != seen[i - 1]]
    assert len(switches) == 1 and seen[switches[0] - 1] == 0.5
    assert engine.decisions[-1] == (0.6, 0.7, True)  # the same segment now escalates
    assert agent.rec.config_version == 2


def test_device_override_merges_over_fleet_config(fleet_env: FleetEnv) -> None:
    box1, box2 = ParamsBox(), ParamsBox()
    acks = fleet_env.listen()
    fleet_env.agent("dev1", box1)
    fleet_env.agent("dev2", box2)
    assert fleet_env.fleetctl("config", "set", "thresholds.confidence=0.4", "beam_size=2",
                              "prompt_words=Asterisk,voicemail") == 0
    assert fleet_env.fleetctl("config", "set", "beam_size=5", "vad.threshold=0.6", "--device", "dev1") == 0
    acks.wait_ack("dev1", "config", version=2)
    acks.wait_ack("dev2", "config", version=1)
    p1 = wait_until(lambda: box1.current() if box1.current().beam_size == 5 else None, what="dev1 override")
    assert p1.thresholds == Thresholds(confidence=0.4)
    assert p1.prompt_words == ("Asterisk", "voicemail")
    assert p1.vad is not None and p1.vad.threshold == 0.6
    assert box2.current().beam_size == 2 and box2.current().vad is None
    # Another device never got dev1's override.
    assert not [a for a in acks.acks("dev2") if a.version == 2]

    # A bad fleet-wide change, then `fleetctl rollback --config` republishes the previous one as v4.
    assert fleet_env.fleetctl("config", "set", "beam_size=1") == 0
    acks.wait_ack("dev2", "config", version=3)
    assert fleet_env.fleetctl("rollback", "--config") == 0
    assert acks.wait_ack("dev2", "config", version=4).accepted
    assert box2.current().beam_size == 2
    assert box1.current().beam_size == 5  # dev1's override still wins


def test_invalid_unsigned_or_misaddressed_config_is_nacked_and_previous_kept(fleet_env: FleetEnv) -> None:
    box = ParamsBox()
    acks = fleet_env.listen()
    fleet_env.agent("dev1", box)
    assert fleet_env.fleetctl("config", "set", "thresholds.confidence=0.5") == 0
    acks.wait_ack("dev1", "config", version=1)
    good = box.current()
    topic = fleet_config_topic(FLEET)

    bad: list[tuple[bytes, str]] = [
        (b"{not json", "malformed JSON"),
        (b'{"schema": 1, "fleet": "lab", "version": 9, "params": {"beam_size": 99}}', "beam_size"),
        (b'{"schema": 7, "fleet": "lab", "version": 9, "params": {}}', "unsupported schema"),
        (b'{"schema": 1, "fleet": "lab", "version": 9, "params": {}, "extra": 1}', "extra"),
        (DesiredConfig(fleet=FLEET, version=9, params=ConfigParams(beam_size=3)).to_json(), "unsigned"),
        (DesiredConfig(fleet=FLEET, version=9, params=ConfigParams(beam_size=3))
         .signed(Ed25519PrivateKey.generate()).to_json(), "bad signature"),
        (DesiredConfig(fleet="other", version=9, params=ConfigParams())
         .signed(fleet_env.keys.private).to_json(), "fleet 'other'"),
    ]
    for payload, why in bad:
        n = len(acks.acks("dev1"))
        fleet_env.publish_raw(topic, payload)
        wait_until(lambda n=n: len(acks.acks("dev1")) > n, what=f"NACK for {why}")
        ack = acks.acks("dev1")[-1]
        assert not ack.accepted and why in ack.reason, (why, ack.reason)
        assert box.current() == good  # the previous config stays in force

    # A device override replayed on the fleet topic (or another device's topic) is refused too.
    own = DesiredConfig(fleet=FLEET, device="dev1", version=10, params=ConfigParams(threads=2))
    n = len(acks.acks("dev1"))
    fleet_env.publish_raw(device_config_topic(FLEET, "dev1"), own.signed(fleet_env.keys.private).to_json())
    wait_until(lambda: len(acks.acks("dev1")) > n, what="override ack")
    assert acks.acks("dev1")[-1].accepted and box.current().threads == 2
    # A stale version is refused.
    old = DesiredConfig(fleet=FLEET, device="dev1", version=4, params=ConfigParams(threads=8))
    fleet_env.publish_raw(device_config_topic(FLEET, "dev1"), old.signed(fleet_env.keys.private).to_json())
    wait_until(lambda: "stale" in acks.acks("dev1")[-1].reason, what="stale NACK")
    assert box.current().threads == 2


def test_config_persists_and_boots_offline(fleet_env: FleetEnv) -> None:
    box = ParamsBox()
    acks = fleet_env.listen()
    agent = fleet_env.agent("dev1", box)
    assert fleet_env.fleetctl("config", "set", "thresholds.confidence=0.35", "threads=3") == 0
    acks.wait_ack("dev1", "config", version=1)
    agent.stop()
    assert fleet_env.config_doc("dev1")["fleet"]["version"] == 1
    fleet_env.broker.stop()  # no broker at all now

    from edge_node.adapters.mqtt_agent import DeviceAgent

    rebooted = ParamsBox()
    again = DeviceAgent(agent.config, rebooted)
    again.boot()  # what start() does first, before any network
    assert rebooted.current().threads == 3
    assert rebooted.current().thresholds == Thresholds(confidence=0.35)
    assert again.rec.config_version == 1
