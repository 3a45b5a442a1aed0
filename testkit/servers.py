"""Real Redis and Mosquitto servers on free loopback ports in temporary directories, for tests and benches."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from shared.fsutil import SECRET_MODE, atomic_write
from testkit.wait import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cloud_serve_cmd(port: int, model: str | Path, *extra: str) -> list[str]:
    """`cloud-service serve` on 127.0.0.1:PORT with this checkpoint, plus the caller's flags."""
    return [sys.executable, "-m", "cloud_service", "serve", "--listen", f"127.0.0.1:{port}", "--model", str(model),
            *extra]


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:PORT now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float = 10.0) -> None:
    try:
        wait_until(lambda: port_open(port), timeout, f"127.0.0.1:{port}", interval=0.05)
    except TimeoutError:
        raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s") from None


class _Server:
    binary = ""
    start_timeout_s = 10.0
    cwd: Path | None = None  # default: the work directory
    log_name = ""  # default: the binary's name + .log

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        if shutil.which(self.binary) is None:
            raise RuntimeError(f"{self.binary} is not installed (run `make setup`)")
        log = (self.workdir / (self.log_name or f"{Path(self.binary).name}.log")).open("ab")
        self.proc = subprocess.Popen(self.command(), cwd=self.cwd or self.workdir, stdout=log, stderr=log)
        wait_port(self.port, self.start_timeout_s)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as when a machine dies."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


class RedisServer(_Server):
    """`password`: the server requires it (`requirepass`, set in a 0600 config file, not on its command line);
    `url` then carries it, as a client's --redis-url-file would."""

    binary = "redis-server"

    def __init__(self, workdir: Path, port: int | None = None, password: str | None = None) -> None:
        super().__init__(workdir, port)
        self.password = password

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        conf: list[str] = []
        if self.password:
            path = self.workdir / "redis.conf"
            atomic_write(path, f"requirepass {self.password}\n".encode(), mode=SECRET_MODE)
            conf = [str(path)]  # the config file comes first on redis-server's command line
        return [
            self.binary, *conf, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
            "--save", "", "--appendonly", "no", "--protected-mode", "yes",
        ]


class MosquittoServer(_Server):
    binary = "mosquitto"

    def __init__(self, workdir: Path, port: int | None = None, extra_conf: str = "") -> None:
        super().__init__(workdir, port)
        self.extra_conf = extra_conf

    def command(self) -> list[str]:
        conf = self.workdir / "mosquitto.conf"
        body = self.extra_conf or "allow_anonymous true\n"
        # Started as root, mosquitto drops to the `mosquitto` user, which cannot write its persistence file in our
        # temporary directory; retained messages would then not survive a kill.
        as_root = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"persistence true\npersistence_location {self.workdir}/\n"
            f"{as_root}{body}"
        )
        return [self._path(), "-c", str(conf)]

    def _path(self) -> str:
        # Debian installs mosquitto in /usr/sbin, which is not always on PATH.
        return shutil.which("mosquitto") or "/usr/sbin/mosquitto"

    def start(self) -> None:
        if not Path(self._path()).exists():
            raise RuntimeError("mosquitto is not installed (run `make setup`)")
        log = (self.workdir / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen(self.command(), cwd=self.workdir, stdout=log, stderr=log)
        wait_port(self.port)
