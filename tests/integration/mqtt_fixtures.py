"""Fixtures for the MQTT control-plane tests: real Mosquitto and Redis, operator keys, agents, fleetctl."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_node.adapters.mqtt_agent import AgentConfig, DeviceAgent, ModelInstaller
from edge_node.core.desired_state import ParamsTarget
from fleetctl.__main__ import main as fleetctl_main
from shared.fleet_schema import Ack, DeviceState, parse_payload
from shared.signing import init_keypair, load_private_key
from testkit.fleet import FLEET
from testkit.servers import MosquittoServer, RedisServer
from testkit.wait import wait_until

# Persist retained messages at once: the broker-restart test SIGKILLs it, as a power cut would.
BROKER_CONF = "allow_anonymous true\nautosave_interval 1\nautosave_on_changes true\n"


@dataclass
class Keys:
    private_path: Path
    public_path: Path
    private: Ed25519PrivateKey


class Listener:
    """A plain MQTT client recording every message under a filter (acks, states) in arrival order."""

    def __init__(self, port: int, topic_filter: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        cid = f"listener-{time.monotonic_ns()}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid)
        self.client.on_connect = lambda c, *a: c.subscribe(topic_filter, qos=1)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload), m.retain))
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def acks(self, device: str | None = None) -> list[Ack]:
        out = [parse_payload(Ack, p) for t, p, _ in list(self.messages) if t.endswith("/ack") and p]
        return [a for a in out if device is None or a.device == device]

    def states(self, device: str) -> list[DeviceState]:
        return [parse_payload(DeviceState, p) for t, p, _ in list(self.messages)
                if t.endswith(f"/devices/{device}/state") and p]

    def wait_ack(self, device: str, kind: str, version: int | None = None, timeout: float = 15.0) -> Ack:
        def find() -> Ack | None:
            for a in self.acks(device):
                if a.kind == kind and (version is None or a.version == version):
                    return a
            return None
        return wait_until(find, timeout, f"{kind} ack v{version} from {device}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class FleetEnv:
    root: Path
    broker: MosquittoServer
    redis: RedisServer
    keys: Keys
    agents: list[DeviceAgent] = field(default_factory=list)
    listeners: list[Listener] = field(default_factory=list)

    def common(self) -> list[str]:
        return ["--broker", f"127.0.0.1:{self.broker.port}", "--fleet", FLEET, "--redis", self.redis.url]

    def fleetctl(self, *args: str, sign: bool = True) -> int:
        argv = [*args, *self.common()]
        if sign:
            argv += ["--key", str(self.keys.private_path)]
        return fleetctl_main(argv)

    def agent(self, device: str, params: ParamsTarget, models: ModelInstaller | None = None,
              counters: Callable[[], Mapping[str, float]] | None = None, **overrides: Any) -> DeviceAgent:
        cfg = AgentConfig(fleet=FLEET, device_id=device, state_dir=self.root / "devices" / device,
                          port=self.broker.port, operator_pubkey=self.keys.public_path,
                          reconnect_min_s=1, reconnect_max_s=2, keepalive_s=5, **overrides)
        agent = DeviceAgent(cfg, params, models, counters)
        agent.start()
        self.agents.append(agent)
        assert agent.wait_connected(10), f"{device} did not connect"
        return agent

    def listen(self, topic_filter: str = f"fleet/{FLEET}/devices/+/+") -> Listener:
        lst = Listener(self.broker.port, topic_filter)
        self.listeners.append(lst)
        return lst

    def config_doc(self, device: str) -> dict[str, Any]:
        return dict(json.loads((self.root / "devices" / device / "config.json").read_text()))

    def publish_raw(self, topic: str, payload: bytes, retain: bool = True) -> None:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"raw-{time.monotonic_ns()}")
        c.connect("127.0.0.1", self.broker.port)
        c.loop_start()
        c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
        c.disconnect()
        c.loop_stop()


@pytest.fixture()
def keys(tmp_path: Path) -> Keys:
    priv, pub = init_keypair(tmp_path / "keys")
    return Keys(priv, pub, load_private_key(priv))


@pytest.fixture()
def fleet_env(tmp_path: Path, keys: Keys) -> Iterator[FleetEnv]:
    broker = MosquittoServer(tmp_path / "mosquitto", extra_conf=BROKER_CONF)
    redis = RedisServer(tmp_path / "redis")
    broker.start()
    redis.start()
    env = FleetEnv(tmp_path, broker, redis, keys)
    try:
        yield env
    finally:
        for agent in env.agents:
            agent.stop()
        for lst in env.listeners:
            lst.close()
        broker.stop()
        redis.stop()

