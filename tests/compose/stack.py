"""Drives the real compose stack from the host: docker-compose, the edges' event files, fleetctl, a timeline.

Everything goes through what an operator has: `docker-compose`, `docker`, `fleetctl` against the published
(loopback) ports with the operator's own credentials, and the edges' event logs read out of their containers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EDGES = ("edge-1", "edge-2")
INFRA = ("mosquitto", "redis", "cloud", "worker", "prometheus")
# Prometheus scrapes these jobs (deploy/prometheus/prometheus.yml): one target each, two for the edges.
SCRAPE_TARGETS = {"cloud": 1, "worker": 1, "edge": len(EDGES)}


@dataclass
class Timeline:
    t0: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)

    def mark(self, what: str) -> None:
        line = f"{time.monotonic() - self.t0:7.1f}s  {what}"
        self.lines.append(line)
        print(f"[compose] {line}", file=sys.stderr, flush=True)


@dataclass
class Stack:
    """One compose project with its own ports, model and sample folders and secrets (see compose-test.sh)."""

    project: str
    work: Path  # .cache/compose: models, samples, secrets of this run
    env: dict[str, str]
    timeline: Timeline = field(default_factory=Timeline)

    @property
    def secrets(self) -> Path:
        return Path(self.env["FLEET_SECRETS_DIR"])

    def compose(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        cmd = ["docker-compose", "-p", self.project, "-f", str(ROOT / "docker-compose.yml"), *args]
        proc = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd[3:])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc

    def container(self, service: str) -> str:
        cid = self.compose("ps", "-q", service).stdout.strip()
        assert cid, f"service {service} has no container"
        return cid

    def health(self, service: str) -> str:
        out = subprocess.run(["docker", "inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{else}}"
                              "{{.State.Status}}{{end}}", self.container(service)],
                             capture_output=True, text=True, check=False)
        return out.stdout.strip() or "missing"

    def wait_healthy(self, services: tuple[str, ...], timeout_s: float = 300) -> None:
        wait(lambda: all(self.health(s) == "healthy" for s in services), timeout_s,
             lambda: f"services not healthy: {[(s, self.health(s)) for s in services]}\n{self.logs(*services)}")

    def logs(self, *services: str, tail: int = 40) -> str:
        return self.compose("logs", "--no-color", f"--tail={tail}", *services, check=False).stdout

    def events(self, edge: str) -> list[dict[str, Any]]:
        """The edge's event log (JSON Lines in its state volume), read from inside its container."""
        proc = subprocess.run(["docker", "exec", self.container(edge), "cat", "/var/lib/edge-node/events.jsonl"],
                              capture_output=True, text=True, check=False)
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    def fleetctl(self, *args: str, timeout: float = 600) -> str:
        """fleetctl as the operator: TLS to the published broker port, credentials from files and env only."""
        op = self.secrets / "operator"
        cmd = [sys.executable, "-m", "fleetctl", *args]
        env = {**self.env, "FLEET_BROKER": f"127.0.0.1:{self.env['FLEET_MQTT_PORT']}",
               "FLEET_MQTT_USERNAME": "fleet-operator",
               "FLEET_MQTT_PASSWORD_FILE": str(op / "fleet-operator.mqtt"),
               "FLEET_TLS_CA": str(op / "ca.pem"),
               "FLEET_REDIS_URL": (op / "redis_url").read_text().strip(),
               "FLEET_OPERATOR_KEY_FILE": str(ROOT / "keys" / "operator.key")}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"fleetctl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        return proc.stdout

    def status(self) -> dict[str, dict[str, Any]]:
        rows = json.loads(self.fleetctl("status", "--json", *self.broker_args()))
        return {r["device"]: (r["state"] or {}) for r in rows}

    def prometheus(self, path: str, **params: str) -> Any:
        """GET the published Prometheus API (127.0.0.1 only); its `data`, after checking `status` is success."""
        url = f"http://127.0.0.1:{self.env['FLEET_PROMETHEUS_PORT']}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        assert body.get("status") == "success", body
        return body["data"]

    def broker_args(self) -> tuple[str, ...]:
        return ("--tls-ca", str(self.secrets / "operator" / "ca.pem"))

    def feed(self, edge: str, clips: list[Path], tag: str) -> list[str]:
        """Drop clips into the edge's input folder (mounted read-only in its container), as a recorder would:
        written under a temporary name, then renamed."""
        folder = Path(self.env["FLEET_SAMPLES_DIR"]) / edge
        names = []
        for clip in clips:
            name = f"{tag}-{clip.parent.name}-{clip.name}"
            tmp = folder / f".{name}.part"
            tmp.write_bytes(clip.read_bytes())
            tmp.chmod(0o644)
            tmp.rename(folder / name)
            names.append(name)
        return names


def wait(cond: Callable[[], bool], timeout_s: float, message: Callable[[], str], every_s: float = 1.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s: {message()}")
        time.sleep(every_s)


def env_for(work: Path, ports: dict[str, int]) -> dict[str, str]:
    return {**os.environ, "TAG": os.environ.get("TAG", "dev"),
            "FLEET_MODELS_DIR": str(work / "cloud-models"), "FLEET_EDGE_MODELS_DIR": str(work / "edge-models"),
            "FLEET_SAMPLES_DIR": str(work / "samples"), "FLEET_SECRETS_DIR": str(work / "secrets"),
            **{k: str(v) for k, v in ports.items()}}
