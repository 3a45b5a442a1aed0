"""The demo's processes: Redis and Mosquitto (per-user passwords and the project's ACL), the fleet controller, the
cloud service and its worker, and the edge nodes. Each runs as a child process logging into the demo directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import redis

from cloud_service.api.health import check
from cloud_service.jobs.store import register_device as register
from proto.asr.v1 import asr_pb2, asr_pb2_grpc
from shared.audio_files import load_audio
from shared.fsutil import SECRET_MODE, atomic_write
from shared.whisper_rules import DETECT
from testkit.servers import MosquittoServer, RedisServer
from testkit.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
PROVISION = ROOT / "deploy" / "mosquitto" / "provision.sh"
SERVICES = ("fleet-operator", "fleet-controller", "cloud-service")
PY = sys.executable


class StartError(RuntimeError):
    """A component did not come up; the message is the one-line reason."""


class Proc:
    """One child process with its own log file; stopped with SIGTERM, then SIGKILL after a grace period."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.cmd, self.log = name, cmd, log
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.rc: int | None = None

    def start(self) -> Proc:
        with self.log.open("ab") as out:
            # Its own session: a Ctrl-C in the terminal reaches only the demo, which then stops children in order.
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=out, stderr=out, env=self.env,
                                         start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def last_line(self) -> str:
        lines = [ln for ln in self.log_text().splitlines() if ln.strip()]
        return lines[-1].strip() if lines else "(no output)"

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """testkit.wait.wait_until, giving up at once (StartError) when the process has exited."""

        def up() -> bool:
            if ready():
                return True
            if not self.alive():
                rc = self.proc.returncode if self.proc else None
                raise StartError(f"{self.name} exited (code {rc}) before {what}: {self.last_line()}")
            return False

        try:
            wait_until(up, timeout, what, interval=0.2)
        except TimeoutError:
            raise StartError(f"{self.name}: no {what} after {timeout:.0f}s (log {self.log})") from None

    def stop(self, grace_s: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.rc = self.proc.returncode
        return self.rc


@dataclass
class Broker:
    """Mosquitto with a password file and the deploy ACL, provisioned by deploy/mosquitto/provision.sh."""

    workdir: Path
    fleet: str
    devices: tuple[str, ...]
    passwords: dict[str, Path] = field(default_factory=dict)
    server: MosquittoServer | None = None

    def provision(self) -> None:
        conf = self.workdir / "mosquitto"
        conf.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "deploy" / "mosquitto" / "acl", conf / "acl")
        secrets = self.workdir / "secrets"
        env = {**os.environ, "PASSWD": str(conf / "passwd"), "ACL": str(conf / "acl"), "SECRETS": str(secrets)}
        jobs = [["device", self.fleet, d] for d in self.devices] + [["service", s] for s in SERVICES]
        with (conf / "provision.log").open("ab") as log:
            for args in jobs:
                done = subprocess.run(["bash", str(PROVISION), *args], env=env, stdout=log, stderr=log)
                if done.returncode != 0:
                    raise StartError(f"provision.sh {' '.join(args)} failed (see {conf / 'provision.log'})")
        self.passwords = {user: secrets / f"{user}.mqtt" for user in (*self.devices, *SERVICES)}

    def start(self) -> int:
        conf = self.workdir / "mosquitto"
        extra = f"allow_anonymous false\npassword_file {conf / 'passwd'}\nacl_file {conf / 'acl'}\n"
        self.server = MosquittoServer(conf, extra_conf=extra)
        try:
            self.server.start()
        except (RuntimeError, TimeoutError) as exc:
            raise StartError(f"mosquitto: {exc}") from None
        return self.server.port

    def stop(self) -> int | None:
        if self.server is None or self.server.proc is None:
            return None
        self.server.stop()
        return self.server.proc.returncode


def start_redis(workdir: Path) -> RedisServer:
    server = RedisServer(workdir / "redis")
    try:
        server.start()
    except (RuntimeError, TimeoutError) as exc:
        raise StartError(f"redis-server: {exc}") from None
    return server


def register_device(redis_url: str, device: str, token_file: Path) -> None:
    """Register `device` (what `fleetctl device add` does): its token goes straight into a 0600 file, never to
    the console."""
    try:
        with redis.Redis.from_url(redis_url, socket_connect_timeout=3.0, socket_timeout=3.0) as client:
            token = register(client, device)
    except (ValueError, redis.RedisError) as exc:
        raise StartError(f"register device {device}: {exc}") from None
    atomic_write(token_file, (token + "\n").encode(), mode=SECRET_MODE)  # 0600 even over an older file


def cloud_healthy(target: str) -> bool:
    try:
        return check(target, timeout_s=1.0) == "SERVING"
    except (grpc.RpcError, OSError):
        return False


def submit(target: str, device: str, token_file: Path, segment_id: str, wav: Path) -> str:
    """The asynchronous path: `Submit` a whole clip (PCM16) as `device`; returns the Redis Stream entry id."""
    pcm = (np.clip(load_audio(wav), -1.0, 1.0) * 32767).astype("<i2").tobytes()
    request = asr_pb2.TranscribeRequest(
        segment_id=segment_id, device_id=device, language=DETECT,
        audio=asr_pb2.Audio(encoding=asr_pb2.Audio.PCM16, sample_rate=16000, data=pcm))
    token = token_file.read_text().strip()
    with grpc.insecure_channel(target) as channel:
        stub = asr_pb2_grpc.EscalationServiceStub(channel)
        try:
            reply = stub.Submit(request, timeout=10, metadata=(("authorization", f"Bearer {token}"),))
        except grpc.RpcError as exc:
            raise StartError(f"Submit {segment_id}: {exc.code().name} {exc.details()}") from None
    return str(reply.stream_id)
