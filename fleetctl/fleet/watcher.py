"""`Watcher`: a subscription to the devices' state and ack topics whose network thread only enqueues.

The consumer (the controller loop, or a rollout waiting for acks) validates, records in Redis and reacts.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleetctl.fleet.mqtt_io import QOS, BrokerSettings, connect
from fleetctl.fleet.store import FleetStore
from shared.errors import UserError
from shared.fleet_schema import Ack, DeviceState, parse_payload, parse_topic

if TYPE_CHECKING:
    from paho.mqtt.client import MQTTMessage

    from shared.mqtt import Client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    topic: str
    fleet: str
    device: str
    message: DeviceState | Ack
    received_at: float


class Watcher:
    """Subscribes to `fleet/{fleet}/devices/+/state` and `.../ack` (fleet may be '+')."""

    def __init__(self, settings: BrokerSettings, fleet: str, redis_client: Any | None,
                 client_id: str | None = None) -> None:
        """`redis_client` None: events are only yielded, not recorded."""
        self._inbox: queue.Queue[tuple[str, bytes, float]] = queue.Queue()
        self._redis = redis_client
        self._stores: dict[str, FleetStore] = {}
        subs = [(f"fleet/{fleet}/devices/+/state", QOS), (f"fleet/{fleet}/devices/+/ack", QOS)]
        cid = client_id or f"fleet-watch-{os.getpid()}-{time.monotonic_ns() % 10**9}"
        self._client = connect(settings, cid, self._on_message, subs)

    def _on_message(self, client: Client, userdata: Any, msg: MQTTMessage) -> None:
        self._inbox.put((msg.topic, bytes(msg.payload), time.time()))  # never block the network thread

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def store(self, fleet: str) -> FleetStore | None:
        if self._redis is None:
            return None
        if fleet not in self._stores:
            self._stores[fleet] = FleetStore(self._redis, fleet)
        return self._stores[fleet]

    def _decode(self, topic: str, payload: bytes, at: float) -> Event | None:
        info = parse_topic(topic)
        if info is None or info.device is None or info.leaf not in ("state", "ack") or not payload:
            return None
        try:
            msg: DeviceState | Ack = (parse_payload(DeviceState, payload) if info.leaf == "state"
                                      else parse_payload(Ack, payload))
        except UserError as exc:
            log.warning("ignoring %s: %s", topic, exc)
            return None
        if (msg.fleet, msg.device) != (info.fleet, info.device):
            log.warning("ignoring %s: payload names %s/%s", topic, msg.fleet, msg.device)
            return None
        return Event(topic, info.fleet, info.device, msg, at)

    def events(self, timeout: float) -> Iterator[Event]:
        """Yield recorded events until `timeout` seconds pass without one."""
        while True:
            try:
                topic, payload, at = self._inbox.get(timeout=timeout)
            except queue.Empty:
                return
            event = self._decode(topic, payload, at)
            if event is None:
                continue
            store = self.store(event.fleet)
            if store is not None:
                if isinstance(event.message, DeviceState):
                    store.record_state(event.message, event.received_at)
                else:
                    store.record_ack(event.message)
            yield event
