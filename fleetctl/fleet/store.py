"""The fleet's state in Redis: devices, their last state and acks, desired config and model history, rollouts.

Keys (all under `fleet:{fleet}:`)::

    seq                     INCR counter: the version of every desired-state message (config and model), the
                            tombstones that clear a topic included, so devices can order them all
    devices                 SET of device ids ever seen
    device:{id}             HASH state (DeviceState JSON), online (0/1), last_seen (unix seconds)
    acks:{kind}:{version}   HASH device -> Ack JSON
    config                  STRING the fleet-wide DesiredConfig JSON last published (absent once cleared)
    config:device:{id}      STRING a device's override (absent once cleared)
    config:history          LIST previous fleet-wide DesiredConfig JSON, newest first
    model:stable            STRING the DesiredModel JSON the whole fleet last completed a rollout to
    model:history           LIST previous stable DesiredModel JSON, newest first
    rollout                 STRING the current or last rollout's record (JSON)
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

from shared.errors import UserError
from shared.fleet_schema import Ack, DesiredConfig, DesiredModel, DeviceState, parse_payload
from shared.net import redact_url

log = logging.getLogger(__name__)


def connect_redis(url: str) -> Any:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)
        client.ping()
    except ValueError as exc:
        raise UserError(f"bad Redis URL {redact_url(url)}: {exc}") from None
    except redis.RedisError as exc:
        raise UserError(f"cannot reach Redis at {redact_url(url)}: {exc}") from None
    return client


class FleetStore:
    def __init__(self, redis_client: Any, fleet: str) -> None:
        self.r = redis_client
        self.fleet = fleet

    def _k(self, *parts: str) -> str:
        return ":".join(("fleet", self.fleet, *parts))

    def next_version(self) -> int:
        return int(self.r.incr(self._k("seq")))

    # ------------------------------------------------------------------ reported state

    def record_state(self, state: DeviceState, received_at: float | None = None) -> None:
        now = received_at or time.time()
        pipe = self.r.pipeline()
        pipe.sadd(self._k("devices"), state.device)
        fields = {"state": state.to_json(), "online": int(state.online)}
        if state.online:
            fields["last_seen"] = now  # an offline (will) message is not a sign of life
        pipe.hset(self._k("device", state.device), mapping=fields)
        pipe.execute()

    def record_ack(self, ack: Ack) -> None:
        pipe = self.r.pipeline()
        pipe.sadd(self._k("devices"), ack.device)
        pipe.hset(self._k("device", ack.device), mapping={"last_seen": time.time()})
        if ack.version is not None:
            pipe.hset(self._k("acks", ack.kind, str(ack.version)), ack.device, ack.to_json())
        pipe.execute()

    def devices(self) -> dict[str, dict[str, Any]]:
        ids = sorted(x.decode() for x in self.r.smembers(self._k("devices")))
        out: dict[str, dict[str, Any]] = {}
        for dev in ids:
            h = {k.decode(): v.decode() for k, v in self.r.hgetall(self._k("device", dev)).items()}
            rec: dict[str, Any] = {"last_seen": float(h["last_seen"]) if "last_seen" in h else None}
            if "state" in h:
                with contextlib.suppress(UserError):
                    rec["state"] = parse_payload(DeviceState, h["state"].encode())
            out[dev] = rec
        return out

    def acks(self, kind: str, version: int) -> dict[str, Ack]:
        raw = self.r.hgetall(self._k("acks", kind, str(version)))
        return {k.decode(): parse_payload(Ack, v) for k, v in raw.items()}

    # ------------------------------------------------------------------ desired state

    def config(self, device: str | None = None) -> DesiredConfig | None:
        raw = self.r.get(self._k("config", "device", device) if device else self._k("config"))
        return parse_payload(DesiredConfig, raw) if raw else None

    def save_config(self, msg: DesiredConfig, push_history: bool = True) -> None:
        """Record a published config; the fleet-wide one it replaces goes onto the history (unless
        `push_history` is False: a rollback republishing the history's head)."""
        if msg.device:
            self.r.set(self._k("config", "device", msg.device), msg.to_json())
            return
        pipe = self.r.pipeline()
        if push_history:
            self._push_config_history(pipe)
        pipe.set(self._k("config"), msg.to_json())
        pipe.execute()

    def clear_config(self, device: str | None) -> None:
        """Record a published config tombstone: no override for `device` any more, or (None) no fleet config,
        whose last one goes onto the history so `rollback --config` can bring it back."""
        if device:
            self.r.delete(self._k("config", "device", device))
            return
        pipe = self.r.pipeline()
        self._push_config_history(pipe)
        pipe.delete(self._k("config"))
        pipe.execute()

    def _push_config_history(self, pipe: Any) -> None:
        old = self.r.get(self._k("config"))
        if old:
            pipe.lpush(self._k("config", "history"), old)
            pipe.ltrim(self._k("config", "history"), 0, 49)

    def pop_config_history(self) -> DesiredConfig | None:
        raw = self.r.lpop(self._k("config", "history"))
        return parse_payload(DesiredConfig, raw) if raw else None

    def stable_model(self) -> DesiredModel | None:
        raw = self.r.get(self._k("model", "stable"))
        return parse_payload(DesiredModel, raw) if raw else None

    def set_stable_model(self, msg: DesiredModel | None, push_history: bool = True) -> None:
        old = self.r.get(self._k("model", "stable"))
        pipe = self.r.pipeline()
        if old and push_history:
            pipe.lpush(self._k("model", "history"), old)
            pipe.ltrim(self._k("model", "history"), 0, 49)
        if msg is None:
            pipe.delete(self._k("model", "stable"))
        else:
            pipe.set(self._k("model", "stable"), msg.to_json())
        pipe.execute()

    def pop_model_history(self) -> DesiredModel | None:
        raw = self.r.lpop(self._k("model", "history"))
        return parse_payload(DesiredModel, raw) if raw else None

    def rollout(self) -> dict[str, Any] | None:
        raw = self.r.get(self._k("rollout"))
        return json.loads(raw) if raw else None

    def save_rollout(self, record: dict[str, Any]) -> None:
        self.r.set(self._k("rollout"), json.dumps(record))
