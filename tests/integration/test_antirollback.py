"""No rollback through a clear (issue 13, finding 2), over real Mosquitto.

An empty retained payload (what the broker shows after someone deletes a retained message) changes nothing, and
an old, validly signed message stays refused once a newer one was accepted in its scope: the device keeps a
persisted high-water mark per kind and scope that survives clears and restarts. Clearing is a signed, versioned
tombstone (`fleetctl config clear`, and the rollout's clears).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from edge_node.core.desired_state import ParamsBox
from fleetctl.fleet.mqtt_io import BrokerSettings, collect_retained
from shared.fleet_schema import (
    ConfigParams,
    DesiredConfig,
    device_config_topic,
    fleet_config_topic,
    fleet_model_topic,
)
from testkit.fleet import FLEET
from testkit.wait import wait_until
from tests.integration.test_agent_guards import RecordingInstaller, desired_model, next_ack

if TYPE_CHECKING:
    from tests.integration.mqtt_fixtures import FleetEnv, Listener

pytest_plugins = ["tests.integration.mqtt_fixtures"]
pytestmark = [pytest.mark.mqtt, pytest.mark.redis]


def signed_config(env: FleetEnv, version: int, device: str | None, **params: object) -> bytes:
    msg = DesiredConfig(fleet=FLEET, device=device, version=version, params=ConfigParams.model_validate(params),
                        issued_at=time.time())
    return msg.signed(env.keys.private).to_json()


def barrier(env: FleetEnv, acks: Listener, topic: str) -> None:
    """Wait until the agent has handled everything published before: one worker handles messages in order, and
    a (non-retained) malformed message is always NACKed."""
    seen = len(acks.acks("dev1"))
    env.publish_raw(topic, b"{barrier", retain=False)
    ack = next_ack(acks, "dev1", seen, "the barrier's NACK")
    assert not ack.accepted and "malformed JSON" in ack.reason, ack


@pytest.mark.parametrize("scope", ["fleet", "device"])
def test_a_deleted_retained_config_changes_nothing_and_an_old_one_stays_refused(
    fleet_env: FleetEnv, scope: str
) -> None:
    device = "dev1" if scope == "device" else None
    topic = device_config_topic(FLEET, "dev1") if device else fleet_config_topic(FLEET)
    box = ParamsBox()
    acks = fleet_env.listen()
    agent = fleet_env.agent("dev1", box)
    v3 = signed_config(fleet_env, 3, device, beam_size=3)
    fleet_env.publish_raw(topic, v3)
    assert acks.wait_ack("dev1", "config", 3).accepted
    fleet_env.publish_raw(topic, signed_config(fleet_env, 5, device, beam_size=5))
    assert acks.wait_ack("dev1", "config", 5).accepted

    seen = len(acks.acks("dev1"))
    fleet_env.publish_raw(topic, b"")  # someone deleted the retained message: no signature, no version
    barrier(fleet_env, acks, topic)
    assert box.current().beam_size == 5 and agent.rec.config_version == 5
    assert len(acks.acks("dev1")) == seen + 1  # the barrier's NACK only: the empty payload is not acked

    seen = len(acks.acks("dev1"))
    fleet_env.publish_raw(topic, v3)  # the old, validly signed v3 replayed
    ack = next_ack(acks, "dev1", seen, "the replayed v3's NACK")
    assert ack.version == 3 and not ack.accepted and "stale" in ack.reason, ack
    assert box.current().beam_size == 5
    assert fleet_env.config_doc("dev1")[scope]["version"] == 5


def test_a_deleted_retained_model_does_not_open_a_downgrade(fleet_env: FleetEnv) -> None:
    installer = RecordingInstaller()
    acks = fleet_env.listen()
    fleet_env.agent("dev1", ParamsBox(), installer)
    topic = fleet_model_topic(FLEET)
    v10 = desired_model(fleet_env, 10, "1", device=None)
    fleet_env.publish_raw(topic, v10)
    assert acks.wait_ack("dev1", "model", 10).accepted
    fleet_env.publish_raw(topic, desired_model(fleet_env, 11, "2", device=None))
    assert acks.wait_ack("dev1", "model", 11).accepted

    fleet_env.publish_raw(topic, b"")
    barrier(fleet_env, acks, topic)
    seen = len(acks.acks("dev1"))
    fleet_env.publish_raw(topic, v10)  # replay of the older model: a downgrade
    ack = next_ack(acks, "dev1", seen, "the replayed v10's NACK")
    assert ack.version == 10 and not ack.accepted and "stale" in ack.reason, ack
    time.sleep(0.3)  # the model thread would install right after the (absent) acceptance
    assert installer.installs == ["1", "2"]
    assert installer.installed is not None and installer.installed.model_version == "2"


def test_a_signed_override_clear_holds_across_a_restart(fleet_env: FleetEnv) -> None:
    from shared.fleet_schema import Tombstone, parse_desired

    box = ParamsBox()
    acks = fleet_env.listen()
    agent = fleet_env.agent("dev1", box)
    assert fleet_env.fleetctl("config", "set", "beam_size=2") == 0  # v1, fleet-wide
    assert fleet_env.fleetctl("config", "set", "beam_size=6", "--device", "dev1") == 0  # v2, the override
    assert acks.wait_ack("dev1", "config", 2).accepted
    settings = BrokerSettings(port=fleet_env.broker.port)
    old_override = next(iter(collect_retained(settings, device_config_topic(FLEET, "dev1")).values()))

    assert fleet_env.fleetctl("config", "clear", "--device", "dev1") == 0
    assert acks.wait_ack("dev1", "config", 3).accepted
    wait_until(lambda: box.current().beam_size == 2, what="back on the fleet config")
    # What the broker keeps is a signed, versioned tombstone, not an empty payload.
    retained = next(iter(collect_retained(settings, device_config_topic(FLEET, "dev1")).values()))
    tomb = parse_desired(DesiredConfig, retained)
    assert isinstance(tomb, Tombstone) and tomb.version == 3 and tomb.kind == "config"
    tomb.verify(fleet_env.keys.private.public_key())

    # An attacker re-retains the old override: refused, now and after a restart.
    seen = len(acks.acks("dev1"))
    fleet_env.publish_raw(device_config_topic(FLEET, "dev1"), old_override)
    assert "stale" in next_ack(acks, "dev1", seen, "NACK of the replayed override").reason
    agent.stop()
    fleet_env.agents.remove(agent)
    rebooted = ParamsBox()
    seen = len(acks.acks("dev1"))
    fleet_env.agent("dev1", rebooted)
    ack = next_ack(acks, "dev1", seen, "NACK of the replayed override after the restart")
    assert ack.version == 2 and not ack.accepted and "stale" in ack.reason, ack
    assert rebooted.current().beam_size == 2

    # The store knows there is no override any more; the next one gets a higher version.
    assert fleet_env.fleetctl("config", "set", "threads=2", "--device", "dev1") == 0
    assert acks.wait_ack("dev1", "config", 4).accepted
    wait_until(lambda: rebooted.current().threads == 2, what="new override")
    assert rebooted.current().beam_size == 2  # the cleared override's beam_size=6 did not come back

    # The fleet-wide config is cleared the same way (engine defaults), and `rollback --config` brings it back.
    assert fleet_env.fleetctl("config", "clear") == 0
    assert acks.wait_ack("dev1", "config", 5).accepted
    wait_until(lambda: rebooted.current().beam_size is None, what="fleet config cleared")
    assert rebooted.current().threads == 2
    assert fleet_env.fleetctl("rollback", "--config") == 0
    assert acks.wait_ack("dev1", "config", 6).accepted
    wait_until(lambda: rebooted.current().beam_size == 2, what="fleet config rolled back")

