"""The device's MQTT agent (paho-mqtt 2.x): desired state in, state and acks out.

Threads: paho's network thread only validates the topic and enqueues (never blocks); one worker thread
reconciles messages, applies parameters to the engine and persists them; one model thread runs the (slow)
downloads and swaps, so a model rollout never delays a parameter change. Subscriptions are made in
`on_connect`, so every reconnect restores them and the broker redelivers the retained desired state.
The client comes from `shared.mqtt.make_client`; `edge-node agent` (edge_node/cli/agent.py) runs the agent alone.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edge_node.core.desired_state import ParamsTarget, Reconciler
from shared.errors import UserError
from shared.fleet_schema import (
    Ack,
    DesiredModel,
    DeviceState,
    check_name,
    device_config_topic,
    device_model_topic,
    fleet_config_topic,
    fleet_model_topic,
    parse_topic,
    state_topic,
)
from shared.fleet_schema import ack_topic as ack_topic_of
from shared.fsutil import atomic_write
from shared.mqtt import Client, MqttSettings, Will, make_client, set_will, start_async
from shared.signing import load_public_key

if TYPE_CHECKING:
    from paho.mqtt.client import ConnectFlags, DisconnectFlags, MQTTMessage
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"  # the last accepted desired-config messages (fleet and device scope)
QOS = 1


@dataclass(frozen=True)
class AgentConfig:
    fleet: str
    device_id: str
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    operator_pubkey: Path | None = None
    require_signed: bool = True  # refuse unsigned desired state (see docs/mqtt.md); always, when a key is given
    keepalive_s: int = 30
    reconnect_min_s: int = 1  # paho doubles the delay after each failed attempt, up to the max
    reconnect_max_s: int = 30
    heartbeat_s: float = 30.0  # how often state (with counters) is republished
    tls_ca: Path | None = None  # set: connect with TLS, verifying the broker against this CA
    insecure: bool = False  # allow plaintext to a broker that is not on loopback (labs only)

    def __post_init__(self) -> None:
        check_name(self.fleet, "fleet")
        check_name(self.device_id, "device id")
        if self.operator_pubkey is not None and not self.require_signed:
            # A key that is there but not insisted on would let an unsigned message through: never both.
            raise ValueError("an operator public key is given, so unsigned desired state must be refused")
        self.mqtt_settings()  # refuses plaintext to a non-loopback broker now, not on the network thread

    def mqtt_settings(self) -> MqttSettings:
        return MqttSettings(
            host=self.host, port=self.port, client_id=f"dev-{self.fleet}-{self.device_id}", username=self.username,
            password=self.password, tls_ca=self.tls_ca, keepalive_s=self.keepalive_s,
            reconnect_min_s=self.reconnect_min_s, reconnect_max_s=self.reconnect_max_s, insecure=self.insecure,
        )


class ModelInstaller(Protocol):
    """What the agent needs from the model updater (edge_node.adapters.model_update.ModelUpdater implements it)."""

    def boot(self) -> DesiredModel | None: ...  # load the persisted model, offline

    def install(self, desired: DesiredModel) -> None: ...  # raise UserError with the reason on failure

    @property
    def installed(self) -> DesiredModel | None: ...


class DeviceAgent:
    def __init__(
        self,
        config: AgentConfig,
        params: ParamsTarget,
        models: ModelInstaller | None = None,
        counters: Callable[[], Mapping[str, float]] | None = None,
        boot_model: tuple[str, str] | None = None,
    ) -> None:
        """`boot_model`: (name, version) of the artifact the device started on, reported until a rollout
        installs another, so an operator sees every device's model before the first rollout too."""
        self.config = config
        self._boot_model = boot_model
        self._params = params
        self._models = models
        self._counters = counters or (lambda: {})
        pubkey = load_public_key(config.operator_pubkey) if config.operator_pubkey else None
        self.rec = Reconciler(config.fleet, config.device_id, pubkey, config.require_signed, clock=time.time)
        self._inbox: queue.Queue[tuple[str, bool, bytes] | None] = queue.Queue()
        self._model_wanted = threading.Event()
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._threads: list[threading.Thread] = []
        self._client = self._make_client()

    # ------------------------------------------------------------------ lifecycle

    def _make_client(self) -> Client:
        client = make_client(self.config.mqtt_settings(), will=self._will())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _will(self) -> Will:
        # The broker publishes this (retained) if we vanish without a clean disconnect.
        return Will(state_topic(self.config.fleet, self.config.device_id), self._state(online=False).to_json(),
                    qos=QOS, retain=True)

    def boot(self) -> None:
        """Restore the last good config and model from disk: the device works without a broker."""
        if self._models is not None:
            self._models.boot()
        path = self.config.state_dir / CONFIG_FILE
        if not path.exists():
            return
        try:
            doc = json.loads(path.read_text())
            for scope, device_scope in (("fleet", False), ("device", True)):
                if doc.get(scope):
                    out = self.rec.receive_config(device_scope, json.dumps(doc[scope]).encode())
                    if out.ack is not None and not out.ack.accepted:
                        log.warning("ignoring persisted %s config: %s", scope, out.ack.reason)
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("cannot read %s (%s); starting from engine defaults", path, exc)
            return
        self._params.apply_params(self.rec.effective_params())
        log.info("restored config version %d from %s", self.rec.config_version, path)

    def start(self) -> None:
        self.boot()
        for target, name in ((self._worker, "agent-worker"), (self._model_worker, "agent-model")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        start_async(self._client, self.config.mqtt_settings())

    def stop(self) -> None:
        """Clean shutdown: state goes offline (retained) and the will is not fired."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._inbox.put(None)
        self._model_wanted.set()
        if self._connected.is_set():
            info = self._client.publish(state_topic(self.config.fleet, self.config.device_id),
                                        self._state(online=False).to_json(), qos=QOS, retain=True)
            info.wait_for_publish(timeout=2.0)
        self._client.disconnect()
        self._client.loop_stop()
        for t in self._threads:
            t.join(timeout=10)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # ------------------------------------------------------------------ network thread: never blocks

    def _on_connect(self, client: Client, userdata: Any, flags: ConnectFlags, reason_code: ReasonCode,
                    properties: Properties | None) -> None:
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            return
        c = self.config
        client.subscribe([
            (fleet_config_topic(c.fleet), QOS), (device_config_topic(c.fleet, c.device_id), QOS),
            (fleet_model_topic(c.fleet), QOS), (device_model_topic(c.fleet, c.device_id), QOS),
        ])
        self._connected.set()
        self._inbox.put(("state", False, b""))  # publish online state from the worker
        log.info("connected to %s:%d", c.host, c.port)

    def _on_disconnect(self, client: Client, userdata: Any, flags: DisconnectFlags, reason_code: ReasonCode,
                       properties: Properties | None) -> None:
        self._connected.clear()
        if not self._stopping.is_set():
            log.warning("disconnected (%s); paho reconnects with backoff", reason_code)

    def _on_message(self, client: Client, userdata: Any, msg: MQTTMessage) -> None:
        info = parse_topic(msg.topic)
        if info is None or info.leaf not in ("config", "model"):
            return
        self._inbox.put((info.leaf, info.device is not None, bytes(msg.payload)))

    def request_state(self) -> None:
        """Republish state soon (e.g. counters changed); never blocks the caller or the network thread."""
        self._inbox.put(("state", False, b""))

    # ------------------------------------------------------------------ worker thread

    def _worker(self) -> None:
        while not self._stopping.is_set():
            try:
                item = self._inbox.get(timeout=self.config.heartbeat_s)
            except queue.Empty:
                item = ("state", False, b"")
            if item is None:
                return
            kind, device_scope, payload = item
            try:
                if kind == "config":
                    self._handle_config(device_scope, payload)
                elif kind == "model":
                    self._handle_model(device_scope, payload)
                self._publish_state()
            except Exception:  # the agent must outlive any single bad message
                log.exception("failed to handle a %s message", kind)

    def _handle_config(self, device_scope: bool, payload: bytes) -> None:
        before = self.rec.effective_params()
        out = self.rec.receive_config(device_scope, payload)
        if out.changed or out.ack is None:
            params = self.rec.effective_params()
            # Re-applied on every (re)delivery: idempotent, and proves the retained config is in force.
            self._params.apply_params(params)
            if params != before or out.changed:
                self._persist_config()
        if out.ack is not None:
            level = logging.INFO if out.ack.accepted else logging.WARNING
            log.log(level, "config v%s %s %s", out.ack.version,
                    "accepted" if out.ack.accepted else "rejected:", out.ack.reason)
            self._publish_ack(out.ack)

    def _persist_config(self) -> None:
        doc = {
            "fleet": json.loads(self.rec.config.fleet.to_json()) if self.rec.config.fleet else None,
            "device": json.loads(self.rec.config.device.to_json()) if self.rec.config.device else None,
        }
        atomic_write(self.config.state_dir / CONFIG_FILE, json.dumps(doc).encode())

    def _handle_model(self, device_scope: bool, payload: bytes) -> None:
        out = self.rec.receive_model(device_scope, payload)
        if out.ack is not None:
            log.warning("model message rejected: %s", out.ack.reason)
            self._publish_ack(out.ack)
        if out.changed:
            self._model_wanted.set()

    # ------------------------------------------------------------------ model thread

    def _model_worker(self) -> None:
        # The version of the last desired-model message handled (acked), so each is acked once; after a reboot
        # the retained message naming the installed model is not acked again.
        installed = self._models.installed if self._models else None
        done = installed.version if installed else 0
        while True:
            self._model_wanted.wait()
            self._model_wanted.clear()
            if self._stopping.is_set():
                return
            desired = self.rec.desired_model()
            if desired is None or desired.version == done:
                continue
            done = desired.version
            try:
                if self._models is None:
                    raise UserError("this device has no model updater")
                self._models.install(desired)  # a no-op beyond recording the version when already running
                ack = self.rec.model_ack(desired, True)
            except UserError as exc:
                ack = self.rec.model_ack(desired, False, str(exc))
            except Exception as exc:  # keep the old model on anything unexpected, and say why
                log.exception("model install failed")
                ack = self.rec.model_ack(desired, False, f"internal error: {exc}")
            log.log(logging.INFO if ack.accepted else logging.WARNING, "model %s v%d %s %s",
                    desired.model_version, desired.version, "installed" if ack.accepted else "rejected:",
                    ack.reason)
            self._publish_ack(ack)
            self._inbox.put(("state", False, b""))

    # ------------------------------------------------------------------ outgoing

    def _state(self, online: bool) -> DeviceState:
        installed = self._models.installed if self._models else None
        return DeviceState.model_validate({
            "fleet": self.config.fleet, "device": self.config.device_id, "online": online,
            "config_version": self.rec.config_version,
            "model_name": installed.name if installed else (self._boot_model or (None, None))[0],
            "model_version": installed.model_version if installed else (self._boot_model or (None, None))[1],
            "model_seq": installed.version if installed else 0,
            "counters": dict(self._counters()), "last_seen": time.time(),
        })

    def _publish_state(self) -> None:
        if self._stopping.is_set():
            return
        set_will(self._client, self._will())  # the will carries the latest versions too
        self._client.publish(state_topic(self.config.fleet, self.config.device_id),
                             self._state(online=True).to_json(), qos=QOS, retain=True)

    def _publish_ack(self, ack: Ack) -> None:
        # QoS 1: paho keeps it queued across a reconnect.
        self._client.publish(ack_topic_of(self.config.fleet, self.config.device_id), ack.to_json(), qos=QOS)
