"""Operator-side MQTT plumbing: connection settings, a connected paho client, retained-state collection."""

from __future__ import annotations

import logging
import os
import queue
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import UserError

log = logging.getLogger(__name__)

QOS = 1


@dataclass(frozen=True)
class BrokerSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca: Path | None = None
    connect_timeout_s: float = 10.0

    @staticmethod
    def parse_address(value: str) -> tuple[str, int]:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(f"--broker {value!r}: expected HOST:PORT")
        return host, int(port)


def read_password(env: str = "FLEET_MQTT_PASSWORD", file_env: str = "FLEET_MQTT_PASSWORD_FILE",
                  file: str | None = None) -> str | None:
    """The MQTT password from a file (preferred) or an environment variable; never from the command line."""
    path = file or os.environ.get(file_env)
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise UserError(f"cannot read the MQTT password file {path}: {exc.strerror}") from None
    return os.environ.get(env)


def connect(settings: BrokerSettings, client_id: str, on_message: Any = None,
            subscriptions: list[tuple[str, int]] | None = None) -> Any:
    """A connected client with its network loop running; subscriptions are (re)made in on_connect."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    if settings.username:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls_ca:
        client.tls_set(ca_certs=str(settings.tls_ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.reconnect_delay_set(1, 10)
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
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
        client.connect(settings.host, settings.port, keepalive=30)
    except OSError as exc:
        raise UserError(f"cannot reach the MQTT broker at {settings.host}:{settings.port}: {exc}") from None
    client.loop_start()
    if not connected.wait(settings.connect_timeout_s) or refused:
        client.loop_stop()
        why = refused[0] if refused else "no answer"
        raise UserError(f"MQTT broker {settings.host}:{settings.port} refused the connection: {why}")
    return client


def publish(client: Any, topic: str, payload: bytes, retain: bool, timeout: float = 10.0) -> None:
    info = client.publish(topic, payload, qos=QOS, retain=retain)
    info.wait_for_publish(timeout)
    if not info.is_published():
        raise UserError(f"publishing to {topic} was not acknowledged by the broker within {timeout}s")


def collect_retained(settings: BrokerSettings, topic_filter: str, quiet_s: float = 0.3,
                     max_s: float = 5.0) -> dict[str, bytes]:
    """Every retained message under a filter: subscribe, read until the broker has been quiet for a moment."""
    inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()

    def on_message(c: Any, userdata: Any, msg: Any) -> None:
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
