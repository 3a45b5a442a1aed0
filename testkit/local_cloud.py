"""A throwaway cloud for benches: a real Redis, a registered device (`cloud_service.jobs.store.register_device`,
what `fleetctl device add` runs), and a `cloud-service serve` subprocess, all on free loopback ports.

    python -m bench.local_cloud --token-file TOKEN [--model models/base.pt]

prints HOST:PORT and runs until SIGTERM or ^C.

`evaluation.hybrid_eval` starts one itself unless given `--cloud`; this entry point keeps one up across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import redis

from cloud_service.jobs.store import register_device
from shared.cli import run_cli, setup_logging
from shared.errors import UserError
from shared.fsutil import SECRET_MODE, atomic_write
from testkit.servers import RedisServer, cloud_serve_cmd, free_port, port_open
from testkit.wait import wait_until

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
SERVE_START_TIMEOUT_S = 300.0  # loading base on a busy 2-core machine


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()  # serve drains in-flight RPCs on SIGTERM
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def local_cloud(
    model: Path, workdir: Path, device_id: str, threads: int = 2, max_audio_s: float = 30.0
) -> Iterator[tuple[str, str]]:
    """Redis + a registered device + `cloud-service serve` (auth on, no rate limit); yields (target, token)."""
    if not model.is_file():
        raise UserError(f"cloud checkpoint not found: {model}")
    redis_server = RedisServer(workdir / "redis")
    redis_server.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        try:
            with redis.Redis.from_url(redis_server.url) as client:
                token = register_device(client, device_id)
        except (ValueError, redis.RedisError) as exc:
            raise UserError(f"cannot register device {device_id}: {exc}") from None
        port = free_port()
        cmd = cloud_serve_cmd(
            port, model, "--redis", redis_server.url, "--device", "cpu",
            "--threads", str(threads), "--rate-limit", "0", "--max-audio-s", str(max_audio_s),
        )  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with (workdir / "serve.log").open("wb") as out:
            proc = serving = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)

        def listening() -> bool:  # the port opens once the model is loaded
            if serving.poll() is not None:
                tail = (workdir / "serve.log").read_text(errors="replace")[-800:]
                raise UserError(f"cloud-service serve exited with {serving.returncode}: {tail}")
            return port_open(port)

        try:
            wait_until(listening, SERVE_START_TIMEOUT_S, "cloud-service serve to listen", interval=0.2)
        except TimeoutError:
            raise UserError(f"cloud-service serve did not listen within {SERVE_START_TIMEOUT_S:.0f} s") from None
        log.info("cloud-service serve on 127.0.0.1:%d (pid %d), Redis %s", port, proc.pid, redis_server.url)
        yield f"127.0.0.1:{port}", token
    finally:
        if proc is not None:
            _stop(proc)
        redis_server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.local_cloud", description=__doc__.splitlines()[0])
    p.add_argument("--token-file", type=Path, required=True, help="write the device token here (mode 0600)")
    p.add_argument("--model", type=Path, default=ROOT / "models" / "base.pt")
    p.add_argument("--device-id", default="hybrid-eval")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    setup_logging()

    def body() -> int:
        with contextlib.ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="local-cloud-")))
            target, token = stack.enter_context(local_cloud(args.model, tmp, args.device_id, args.threads))
            atomic_write(args.token_file, (token + "\n").encode(), mode=SECRET_MODE)  # 0600 over an old file too
            print(target, flush=True)
            stop = threading.Event()
            # SIGTERM or ^C: leave the with-block, which stops serve and Redis (a background job ignores SIGINT).
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
            while not stop.wait(1.0):
                pass
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
