"""The broker dies (SIGKILL) and comes back on the same port: devices reconnect, resubscribe, and the retained
desired config is delivered and applied again; later changes still arrive."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from testkit.fleet import RecordingEngine
from testkit.wait import wait_until

if TYPE_CHECKING:
    from tests.integration.mqtt_fixtures import FleetEnv

pytest_plugins = ["tests.integration.mqtt_fixtures"]
pytestmark = [pytest.mark.mqtt, pytest.mark.redis, pytest.mark.faults]


def test_broker_restart_devices_reconnect_and_retained_config_is_reapplied(fleet_env: FleetEnv) -> None:
    engines = {d: RecordingEngine() for d in ("dev1", "dev2")}
    agents = {d: fleet_env.agent(d, e) for d, e in engines.items()}
    listener = fleet_env.listen()
    assert fleet_env.fleetctl("config", "set", "thresholds.confidence=0.55") == 0
    for d in engines:
        assert listener.wait_ack(d, "config", version=1).accepted
    applied_before = {d: len(e.applied) for d, e in engines.items()}

    fleet_env.broker.kill()
    wait_until(lambda: not any(a.connected for a in agents.values()), what="agents to notice the broker died")
    for e in engines.values():  # no broker: devices keep working with what they have
        e.process(0.5)
        assert e.decisions[-1] == (0.5, 0.55, True)

    fleet_env.broker.start()  # same port, same persistence directory
    wait_until(lambda: all(a.connected for a in agents.values()), timeout=20, what="reconnect")
    for d, e in engines.items():
        wait_until(lambda e=e, d=d: len(e.applied) > applied_before[d], what=f"{d} re-applying the config")
        assert e.applied[-1].thresholds is not None and e.applied[-1].thresholds.confidence == 0.55
        wait_until(lambda d=d: any(s.online for s in listener.states(d)[-1:]), what=f"{d} online again")

    # The subscriptions came back with the connection: a new change reaches every device.
    assert fleet_env.fleetctl("config", "set", "thresholds.confidence=0.8") == 0
    for d, e in engines.items():
        assert listener.wait_ack(d, "config", version=2, timeout=20).accepted
        e.process(0.7)
        assert e.decisions[-1] == (0.7, 0.8, True)
