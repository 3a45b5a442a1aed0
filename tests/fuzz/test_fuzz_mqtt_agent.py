"""A storm of generated desired-state payloads at a live device agent over real Mosquitto (issue 13).

Each case publishes one payload (valid, replayed, foreign, wrongly signed, mutated or empty) on one of the
device's four desired-state topics. Afterwards the agent must still be connected and working: a fresh signed
config is applied and acknowledged, and its retained state says online.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_node.core.desired_state import ParamsBox
from shared.fleet_schema import (
    ConfigParams,
    DesiredConfig,
    device_config_topic,
    device_model_topic,
    fleet_config_topic,
    fleet_model_topic,
)
from testkit.fleet import FLEET
from testkit.wait import wait_until
from tests.fuzz import test_fuzz_mqtt_payloads as payloads
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.test_fuzz_mqtt_payloads import desired

if TYPE_CHECKING:
    from tests.integration.mqtt_fixtures import FleetEnv

pytest_plugins = ["tests.integration.mqtt_fixtures"]
pytestmark = [pytest.mark.fuzz, pytest.mark.mqtt, pytest.mark.redis]
DEVICE = "dev1"


@pytest.fixture()
def publisher(fleet_env: FleetEnv) -> Iterator[mqtt.Client]:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"storm-{time.monotonic_ns()}")
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", fleet_env.broker.port)
    c.loop_start()
    yield c
    c.disconnect()
    c.loop_stop()


def test_agent_outlives_a_payload_storm(fleet_env: FleetEnv, publisher: mqtt.Client,
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert payloads.FLEET == FLEET  # the strategy addresses the env's fleet
    box = ParamsBox()
    agent = fleet_env.agent(DEVICE, box)
    acks = fleet_env.listen()
    topics = {("config", False): fleet_config_topic(FLEET), ("config", True): device_config_topic(FLEET, DEVICE),
              ("model", False): fleet_model_topic(FLEET), ("model", True): device_model_topic(FLEET, DEVICE)}
    sent = 0

    @fuzz_settings
    @given(case=st.sampled_from(["config", "model"]).flatmap(
        lambda k: st.tuples(st.just(k), desired(k, fleet_env.keys.private))), retain=st.booleans())
    def case(case: tuple[str, tuple[bool, bytes, bool]], retain: bool) -> None:
        nonlocal sent
        kind, (device_scope, payload, _) = case
        publisher.publish(topics[(kind, device_scope)], payload, qos=1, retain=retain).wait_for_publish(10)
        sent += 1

    case()
    # Newer than anything the storm could have put in force: the agent must apply it and say so.
    final = DesiredConfig(fleet=FLEET, device=None, version=10_000, params=ConfigParams(beam_size=3))
    publisher.publish(topics[("config", False)], final.signed(fleet_env.keys.private).to_json(), qos=1,
                      retain=True).wait_for_publish(10)
    acks.wait_ack(DEVICE, "config", 10_000, timeout=120)
    wait_until(lambda: box.current().beam_size == 3, 30, "the final config in force")
    assert agent.connected and sent >= 1
    state = wait_until(lambda: next((s for s in reversed(acks.states(DEVICE)) if s.config_version >= 10_000), None), 30,
                       "a state with the final config version")
    assert state.online
    crashes = [r.getMessage() for r in caplog.records if r.exc_info]  # a guard caught an unexpected error
    assert not crashes, crashes[:3]
