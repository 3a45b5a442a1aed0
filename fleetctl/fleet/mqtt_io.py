"""Operator-side MQTT plumbing: connection settings, a connected paho client, retained-state collection.

The client itself comes from `shared.mqtt.make_client` (the one factory); this module adds what the operator
needs on top: a blocking connect that fails fast with a UserError, and reading the retained state.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from shared.errors import UserError
from shared.fsutil import read_secret
from shared.mqtt import Client, MqttSettings, make_client

if TYPE_CHECKING:
    from paho.mqtt.client import CallbackOnMessage, ConnectFlags, MQTTMessage
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

QOS = 1


@dataclass(frozen=True)
class BrokerSettings(MqttSettings):
    """The shared MQTT settings, plus how long the operator's blocking connect waits for the broker."""

    connect_timeout_s: float = 10.0


def read_password(env: str = "FLEET_MQTT_PASSWORD", file_env: str = "FLEET_MQTT_PASSWORD_FILE",
                  file: str | None = None) -> str | None:
    """The MQTT password from a file (preferred) or an environment variable; never from the command line."""
    path = file or os.environ.get(file_env)
    if path:
        return read_secret(path, "the MQTT password file")
    return os.environ.get(env)


def connect(settings: BrokerSettings, client_id: str, on_message: CallbackOnMessage | None = None,
            subscriptions: list[tuple[str, int]] | None = None) -> Client:
    """A connected client with its network loop running; subscriptions are (re)made in on_connect."""
    client = make_client(replace(settings, client_id=client_id))
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(c: Client, userdata: Any, flags: ConnectFlags, rc: ReasonCode,
                   props: Properties | None) -> None:
        if rc.is_failure:
            refused.append(str(rc))
            connected.set()
            return
        if subscriptions:
            c.subscribe(subscriptions)
        connected.set()

    client.on_connect = on_connect
    if on_message is not None:
        client.on_message = on_message
    try:
        client.connect(settings.host, settings.port, keepalive=settings.keepalive_s)
    except OSError as exc:
        raise UserError(f"cannot reach the MQTT broker at {settings.host}:{settings.port}: {exc}") from None
    client.loop_start()
    if not connected.wait(settings.connect_timeout_s) or refused:
        client.loop_stop()
        why = refused[0] if refused else "no answer"
        raise UserError(f"MQTT broker {settings.host}:{settings.port} refused the connection: {why}")
    return client


def publish(client: Client, topic: str, payload: bytes, retain: bool, timeout: float = 10.0) -> None:
    info = client.publish(topic, payload, qos=QOS, retain=retain)
    info.wait_for_publish(timeout)
    if not info.is_published():
        raise UserError(f"publishing to {topic} was not acknowledged by the broker within {timeout}s")


def collect_retained(settings: BrokerSettings, topic_filter: str, quiet_s: float = 0.3,
                     max_s: float = 5.0) -> dict[str, bytes]:
    """Every retained message under a filter: subscribe, read until the broker has been quiet for a moment."""
    inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()

    def on_message(c: Client, userdata: Any, msg: MQTTMessage) -> None:
        if msg.retain:
            inbox.put((msg.topic, bytes(msg.payload)))

    client = connect(settings, f"fleetctl-read-{os.getpid()}-{time.monotonic_ns()}", on_message,
                     [(topic_filter, QOS)])
    out: dict[str, bytes] = {}
    deadline = time.monotonic() + max_s
    try:
        while time.monotonic() < deadline:
            try:
                topic, payload = inbox.get(timeout=quiet_s)
            except queue.Empty:
                break
            if payload:
                out[topic] = payload
    finally:
        client.disconnect()
        client.loop_stop()
    return out
