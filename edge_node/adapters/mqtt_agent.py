"""The device's MQTT agent (paho-mqtt 2.x): desired state in, state and acks out.

Threads: paho's network thread only validates the topic and enqueues (never blocks); one worker thread
reconciles messages, applies parameters to the engine and persists them; one model thread runs the (slow)
downloads and swaps, so a model rollout never delays a parameter change. Subscriptions are made in
`on_connect`, so every reconnect restores them and the broker redelivers the retained desired state.
The client comes from `shared.mqtt.make_client`; `edge-node agent` (edge_node/cli/agent.py) runs the agent alone.

No single message may stop either thread: a config the engine cannot apply is NACKed and the old one stays in
force (nothing persisted); anything unexpected while handling a message is logged and NACKed, and the loop goes
on. The state dir (edge_node.adapters.agent_state) holds the last accepted config and the high-water marks.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edge_node.adapters.agent_state import CONFIG_FILE, AgentStateDir
from edge_node.core.desired_state import Mark, ParamsTarget, Reconciler
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
    peek_version,
    state_topic,
)
from shared.fleet_schema import ack_topic as ack_topic_of
from shared.mqtt import Client, MqttSettings, Will, make_client, set_will, start_async
from shared.signing import load_public_key

if TYPE_CHECKING:
    from paho.mqtt.client import ConnectFlags, DisconnectFlags, MQTTMessage
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

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
        self._disk = AgentStateDir(config.state_dir)
        self._saved_marks: dict[str, Mark] = {}  # what marks.json holds, so it is only rewritten on a change
        self._model_done = 0  # the version of the last desired-model message handled (acked)
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
        """Restore the marks, the last good config and the model from disk: the device works without a broker.

        The persisted config is verified and applied like a message: one that fails either (written by an older
        agent, or refused by this engine) is logged and ignored, so a bad config can never crash every boot."""
        if self._models is not None:
            self._models.boot()
        self.rec.marks = self._disk.load_marks()
        self._saved_marks = dict(self.rec.marks)
        restored = False
        for scope, payload in self._disk.load_config().items():
            out = self.rec.receive_config_applying(scope == "device", payload, self._params.apply_params)
            if out.ack is not None and not out.ack.accepted:
                log.warning("ignoring the persisted %s config: %s", scope, out.ack.reason)
            restored = restored or out.changed
        self._persist_marks()  # a config.json older than marks.json seeds the marks
        if restored:
            log.info("restored config version %d from %s", self.rec.config_version,
                     self.config.state_dir / CONFIG_FILE)

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
            self._work(*item)

    def _work(self, kind: str, device_scope: bool, payload: bytes) -> None:
        """One inbox item; never raises, so the worker outlives any single message."""
        handler = {"config": self._handle_config, "model": self._handle_model}.get(kind)
        if handler is not None:
            try:
                handler(device_scope, payload)
            except Exception as exc:  # a bug, a full disk: say so to the operator, keep going
                log.exception("failed to handle a %s message", kind)
                self._publish_ack_safely(self.rec.reject(kind, peek_version(payload), f"internal error: {exc}"))
        try:
            self._publish_state()
        except Exception:
            log.exception("failed to publish the device state")

    def _handle_config(self, device_scope: bool, payload: bytes) -> None:
        out = self.rec.receive_config_applying(device_scope, payload, self._params.apply_params)
        if out.ignored:
            log.warning("%s config topic: %s", "device" if device_scope else "fleet", out.ignored)
            return
        if out.changed:
            self._persist()
        elif out.ack is None:
            self._reapply()
        if out.ack is not None:
            level = logging.INFO if out.ack.accepted else logging.WARNING
            log.log(level, "config v%s %s %s", out.ack.version,
                    "accepted" if out.ack.accepted else "rejected:", out.ack.reason)
            self._publish_ack(out.ack)

    def _reapply(self) -> None:
        # A duplicate (retained re-delivery): re-applied, idempotent, which proves the retained config is in force.
        try:
            self._params.apply_params(self.rec.effective_params())
        except Exception:  # they were applied once already; the engine refusing them now changes nothing here
            log.exception("re-applying the config in force failed")

    def _persist(self) -> None:
        self._persist_marks()  # first: a crash before the config is written still refuses older messages
        self._disk.save_config(self.rec.config.fleet, self.rec.config.device)

    def _persist_marks(self) -> None:
        if self.rec.marks != self._saved_marks:
            self._disk.save_marks(self.rec.marks)
            self._saved_marks = dict(self.rec.marks)

    def _handle_model(self, device_scope: bool, payload: bytes) -> None:
        out = self.rec.receive_model(device_scope, payload)
        if out.ignored:
            log.warning("%s model topic: %s", "device" if device_scope else "fleet", out.ignored)
            return
        if out.changed:
            self._persist_marks()  # before any ack: an acked message is never forgotten
        if out.ack is not None:
            level = logging.INFO if out.ack.accepted else logging.WARNING
            log.log(level, "model message v%s %s %s", out.ack.version,
                    "accepted (cleared)" if out.ack.accepted else "rejected:", out.ack.reason)
            self._publish_ack(out.ack)
        if out.changed:
            self._model_wanted.set()

    # ------------------------------------------------------------------ model thread

    def _model_worker(self) -> None:
        # Each desired-model message is acked once (`_model_done`); after a reboot the retained message naming
        # the installed model is not acked again.
        installed = self._models.installed if self._models else None
        self._model_done = installed.version if installed else 0
        while True:
            self._model_wanted.wait()
            self._model_wanted.clear()
            if self._stopping.is_set():
                return
            try:
                self._install_desired()
            except Exception:  # e.g. the ack could not be queued: the next update must still be handled
                log.exception("model update failed; waiting for the next one")

    def _install_desired(self) -> None:
        desired = self.rec.desired_model()
        if desired is None or desired.version == self._model_done:
            return
        self._model_done = desired.version
        try:
            if self._models is None:
                raise UserError("this device has no model updater")
            self._models.install(desired)  # a no-op beyond recording the version when already running
            ack = self.rec.model_ack(desired, True)
        except UserError as exc:
            ack = self.rec.model_ack(desired, False, str(exc))  # the reason is cut to the Ack limit
        except Exception as exc:  # keep the old model on anything unexpected, and say why
            log.exception("model install failed")
            ack = self.rec.model_ack(desired, False, f"internal error: {exc}")
        log.log(logging.INFO if ack.accepted else logging.WARNING, "model %s v%d %s %s",
                desired.model_version, desired.version, "installed" if ack.accepted else "rejected:",
                ack.reason[:200])
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

    def _publish_ack_safely(self, ack: Ack) -> None:
        try:
            self._publish_ack(ack)
        except Exception:
            log.exception("could not publish the NACK for a failed message")
