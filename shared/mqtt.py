"""The one paho-mqtt 2.x client factory, shared by the device agent, the cloud worker, fleetctl and the benches.

This is the only module in `shared/` that imports paho: a documented adapter (the import contract in
`pyproject.toml` names it), kept here because the edge, the cloud and the operator tool all connect to the same
broker the same way. Everything else in `shared/` stays free of network I/O.

`MqttSettings` says where and as whom to connect; `make_client` turns it into a configured, unconnected client:
callback API version 2, MQTT 3.1.1, a clean session, credentials, TLS when a CA is given (verifying the broker,
with a client certificate when one is given), reconnect backoff and an optional last will. A broker that is not
on loopback must be reached over TLS unless `insecure` says otherwise (`--insecure`, labs only): every MQTT
client of the fleet is made here, so the rule holds for all of them.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from shared.net import is_loopback, require_tls

Client = mqtt.Client
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""  # "" lets paho pick a random one
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # read from a file (shared.fsutil.read_secret)
    tls_ca: Path | None = None  # set: TLS, the broker's certificate verified against this CA
    tls_cert: Path | None = None  # client certificate (with tls_key), only over TLS
    tls_key: Path | None = None
    keepalive_s: int = 30
    reconnect_min_s: int = 1  # paho doubles the delay after each failed attempt, up to the max
    reconnect_max_s: int = 10
    insecure: bool = False  # allow plaintext to a broker that is not on loopback (labs only)

    def __post_init__(self) -> None:
        if (self.tls_cert or self.tls_key) and not self.tls_ca:
            raise ValueError("an MQTT client certificate needs TLS: give the broker's CA too")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("an MQTT client certificate needs both the certificate and its key")
        require_tls(self.host, tls=self.tls_ca is not None, insecure=self.insecure,
                    what=f"MQTT to the broker {self.host}:{self.port}", tls_flag="the broker's CA certificate")


@dataclass(frozen=True)
class Will:
    """What the broker publishes for the client when it vanishes without a clean disconnect."""

    topic: str
    payload: bytes | str
    qos: int = 1
    retain: bool = True


def set_will(client: mqtt.Client, will: Will) -> None:
    """Set (or replace, before the next connect) the client's last will."""
    client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)


def make_client(settings: MqttSettings, will: Will | None = None) -> mqtt.Client:
    """A configured paho client, not yet connected; callers set callbacks, then connect (see `start_async`)."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=settings.client_id, protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    if settings.username:
        if settings.password and not settings.tls_ca and not is_loopback(settings.host):
            log.warning("--insecure: the MQTT password for %s goes to %s in clear", settings.username,
                        settings.host)
        client.username_pw_set(settings.username, settings.password)
    if settings.tls_ca:
        client.tls_set(
            ca_certs=str(settings.tls_ca),
            certfile=str(settings.tls_cert) if settings.tls_cert else None,
            keyfile=str(settings.tls_key) if settings.tls_key else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)
    if will is not None:
        set_will(client, will)
    return client


def start_async(client: mqtt.Client, settings: MqttSettings) -> None:
    """Connect in the background and start the network thread: paho retries with backoff until the broker
    answers, and reconnects after every loss."""
    client.connect_async(settings.host, settings.port, keepalive=settings.keepalive_s)
    client.loop_start()
