"""What the demo shows as it happens: the edge nodes' JSONL events (tailed from their files) and the devices' MQTT
acks and states, printed as one timestamped console log with a prefix per source, and kept for the final checks.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetctl.fleet.mqtt_io import QOS, BrokerSettings, connect

if TYPE_CHECKING:
    from paho.mqtt.client import MQTTMessage

    from shared.mqtt import Client


class Console:
    """`  12.3s [edge-1] ...`: seconds since the demo started, the source, the line. Thread-safe."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self._lock = threading.Lock()

    def say(self, source: str, text: str) -> None:
        with self._lock:
            for i, line in enumerate(text.splitlines() or [""]):
                stamp = f"{time.monotonic() - self.t0:6.1f}s" if i == 0 else " " * 7
                print(f"{stamp} [{source:<8}] {line}", flush=True)


@dataclass(frozen=True)
class FileInfo:
    node: str
    clip: str  # clip name, e.g. en-white-5db-vm-next
    text: str  # reference transcript
    phase: int  # 1: before the config change, 2: after
    lang: str


@dataclass
class Record:
    """Everything seen, for the checks: segment and revision events per node, acks and states from MQTT."""

    files: dict[str, FileInfo] = field(default_factory=dict)  # file key -> info
    segments: list[dict[str, Any]] = field(default_factory=list)
    revisions: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)  # escalation_failed events
    acks: list[dict[str, Any]] = field(default_factory=list)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)  # asynchronous results published by the worker
    cond: threading.Condition = field(default_factory=threading.Condition)

    def file_of(self, segment_id: str) -> FileInfo | None:
        for key, info in self.files.items():
            if f"-{key}-" in segment_id:
                return info
        return None

    def wait(self, predicate: Any, timeout: float) -> bool:
        with self.cond:
            return bool(self.cond.wait_for(predicate, timeout))

    def segments_of(self, key: str) -> list[dict[str, Any]]:
        return [s for s in self.segments if f"-{key}-" in s["segment_id"]]

    def pending_revisions(self) -> list[str]:
        done = {r["segment_id"] for r in self.revisions} | {f["segment_id"] for f in self.failures}
        return [s["segment_id"] for s in self.segments if not s["final"] and s["segment_id"] not in done]


def _short(text: str, width: int = 60) -> str:
    text = text.strip()
    return f'"{text}"' if len(text) <= width else f'"{text[: width - 1]}…"'


class EventTail(threading.Thread):
    """Follows each node's events file (the daemon appends one JSON object per line, flushed) and prints them."""

    def __init__(self, files: dict[str, Path], record: Record, console: Console) -> None:
        super().__init__(name="event-tail", daemon=True)
        self.files, self.record, self.console = files, record, console
        self.stop = threading.Event()
        self._offsets = dict.fromkeys(files, 0)
        self._partial = dict.fromkeys(files, b"")

    def run(self) -> None:
        while not self.stop.is_set():
            self.poll()
            self.stop.wait(0.2)
        self.poll()

    def poll(self) -> None:
        for node, path in self.files.items():
            if not path.exists():
                continue
            # Bytes, not text: a read can end inside a line, even inside a UTF-8 character (Spanish text).
            with path.open("rb") as f:
                f.seek(self._offsets[node])
                data = f.read()
                self._offsets[node] = f.tell()
            lines = (self._partial[node] + data).split(b"\n")
            self._partial[node] = lines.pop()  # an unfinished last line waits for the rest
            for line in lines:
                if line.strip():
                    self.show(node, json.loads(line.decode("utf-8")))

    def show(self, node: str, ev: dict[str, Any]) -> None:
        info = self.record.file_of(ev.get("segment_id", ""))
        clip = info.clip if info else "?"
        kind = ev.get("type")
        if kind == "segment":
            verdict = "final" if ev["final"] else "ESCALATED -> cloud"
            if ev.get("budget_exceeded"):
                verdict = "final (over budget, not escalated)"
            self.console.say(node, f"{clip:<34} edge  {_short(ev['text'])}  conf {ev['confidence']:.2f}  {verdict}")
        elif kind == "revision":
            self.console.say(node, f"{clip:<34} cloud {_short(ev['text'])}  lang {ev.get('language') or '?'}  "
                                   "revision (final)")
        elif kind == "escalation_failed":
            self.console.say(node, f"{clip:<34} escalation FAILED: {ev.get('reason')}")
        with self.record.cond:
            ev = {**ev, "node": node}
            if kind == "segment":
                self.record.segments.append(ev)
            elif kind == "revision":
                self.record.revisions.append(ev)
            elif kind == "escalation_failed":
                self.record.failures.append(ev)
            self.record.cond.notify_all()


class MqttWatch:
    """An operator's view of the broker: every device's acks and state (fleet-operator reads `fleet/#`)."""

    def __init__(self, settings: BrokerSettings, fleet: str, record: Record, console: Console) -> None:
        self.record, self.console = record, console
        subs = [(f"fleet/{fleet}/devices/+/{leaf}", QOS) for leaf in ("ack", "state", "results")]
        self.client = connect(settings, f"demo-watch-{time.monotonic_ns()}", self._on_message, subs)

    def _on_message(self, client: Client, userdata: Any, msg: MQTTMessage) -> None:
        # Runs on paho's network thread: parse and record only, nothing that blocks.
        try:
            body = json.loads(msg.payload)
        except ValueError:
            self.console.say("mqtt", f"{msg.topic}: not JSON ({len(msg.payload)} bytes)")
            return
        leaf = msg.topic.rsplit("/", 1)[-1]
        device = body.get("device") or msg.topic.split("/")[3]
        with self.record.cond:
            if leaf == "results":
                self.record.results.append(body)
                self.console.say("worker", f"{device} result on {msg.topic}: {_short(body.get('text', ''))}  "
                                           f"lang {body.get('language')}  segment {body.get('segment_id')}")
            elif leaf == "ack":
                self.record.acks.append(body)
                verdict = "accepted" if body.get("accepted") else f"REJECTED ({body.get('reason')})"
                self.console.say("mqtt", f"{device} ack {body.get('kind')} v{body.get('version')}: {verdict}")
            elif leaf == "state":
                before = self.record.states.get(device, {})
                self.record.states[device] = body
                if before.get("online") != body.get("online") or before.get("config_version") != body.get(
                        "config_version"):
                    self.console.say("mqtt", f"{device} state: {'online' if body.get('online') else 'offline'}, "
                                             f"config v{body.get('config_version')}")
            self.record.cond.notify_all()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
