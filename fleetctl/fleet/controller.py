"""The fleet controller loop: every device's state and acks, from MQTT into Redis. Run it as `fleetctl controller`.

The subscription is `fleetctl.fleet.watcher.Watcher`, shared with the rollout that waits for acks.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

from fleetctl.fleet.mqtt_io import BrokerSettings
from fleetctl.fleet.watcher import Watcher
from shared.fleet_schema import Ack

log = logging.getLogger(__name__)


def run_controller(settings: BrokerSettings, redis_client: Any, fleet: str = "+",
                   stop: threading.Event | None = None) -> None:
    stop = stop or threading.Event()
    watcher = Watcher(settings, fleet, redis_client, client_id=f"fleet-controller-{os.getpid()}")
    log.info("fleet controller recording fleet/%s/devices/+/{state,ack} into Redis", fleet)
    try:
        while not stop.is_set():
            for event in watcher.events(timeout=0.5):
                m = event.message
                if isinstance(m, Ack):
                    log.info("%s/%s %s v%s %s %s", event.fleet, event.device, m.kind, m.version,
                             "ACK" if m.accepted else "NACK", m.reason)
                if stop.is_set():
                    break
    finally:
        watcher.close()


def install_stop_handler(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)

