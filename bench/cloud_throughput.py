"""Cloud throughput: dynamic batching against max_batch=1 at 1, 4 and 16 concurrent clients.

Starts a real `cloud-service serve` process (base weights, Redis for dedup/auth/rate limits when
redis-server is installed) per configuration, drives it over loopback gRPC with N concurrent clients sending
real Asterisk prompts (PCM16, unique segment ids), and reports per run: segments/s, p50/p95 latency, and the
server overhead outside inference: client latency minus the server's queue wait (batching window included)
minus inference time, i.e. transport, auth, Redis, audio decoding and scheduling (and, separately, the part
of it measured inside the server: handler time minus queue and inference).

    python -m bench.cloud_throughput --json bench/out/cloud_throughput.json [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np
import redis

from cloud_service.jobs.store import register_device
from evaluation import asterisk
from proto.asr.v1 import asr_pb2, asr_pb2_grpc
from testkit.servers import RedisServer, cloud_serve_cmd, free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 4, 16)


@dataclass(frozen=True)
class Run:
    concurrency: int
    max_batch: int
    segments: int
    segments_per_s: float
    p50_ms: float
    p95_ms: float
    overhead_p50_ms: float
    overhead_p95_ms: float
    server_overhead_p95_ms: float  # the part spent inside the server process, outside queue and inference
    mean_batch: float


def _clips(n: int) -> list[tuple[bytes, int]]:
    import soundfile as sf

    out = []
    for p in asterisk.prompts("en", min_words=4)[:n]:
        samples, rate = sf.read(p.wav, dtype="int16")
        out.append((samples.astype("<i2").tobytes(), int(rate)))
    if not out:
        raise SystemExit("no Asterisk English prompts installed (run `make setup`)")
    return out


class Service:
    """`cloud-service serve` in a subprocess on a free loopback port."""

    def __init__(
        self, model: str, max_batch: int, redis_url: str | None, token_dir: Path, threads: int,
        quantize: str = "none",
        pack: bool = False,
    ) -> None:
        self.port = free_port()
        cmd = cloud_serve_cmd(
            self.port,
            model,
            "--max-batch",
            str(max_batch),
            "--max-wait-ms",
            "10",
            "--queue-size",
            "256",
            "--rate-limit",
            "0",
            "--threads",
            str(threads),
            "--quantize",
            quantize,
            *(["--pack"] if pack else []),
        )
        cmd += ["--redis", redis_url] if redis_url else ["--no-auth"]
        self.log = (token_dir / f"serve-{max_batch}.log").open("wb")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait(self) -> None:
        wait_port(self.port, timeout=300)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


async def _drive(
    port: int, token: str | None, clips: list[tuple[bytes, int]], concurrency: int, per_client: int, tag: str
) -> tuple[list[float], list[float], list[float], list[int], float]:
    metadata = [("authorization", f"Bearer {token}")] if token else []
    latencies: list[float] = []
    overheads: list[float] = []
    server_overheads: list[float] = []
    batches: list[int] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = asr_pb2_grpc.EscalationServiceStub(channel)

        async def client(c: int) -> None:
            for i in range(per_client):
                data, rate = clips[(c * per_client + i) % len(clips)]
                req = asr_pb2.TranscribeRequest(
                    segment_id=f"bench-{tag}-{c}-{i}",  # ids start with the device id
                    device_id="bench",
                    language="en",
                    audio=asr_pb2.Audio(encoding=asr_pb2.Audio.PCM16, sample_rate=rate, data=data),
                )
                t0 = time.perf_counter()
                resp = await stub.Transcribe(req, metadata=metadata, timeout=600)
                ms = (time.perf_counter() - t0) * 1000
                latencies.append(ms)
                overheads.append(ms - resp.timing.queue_ms - resp.timing.inference_ms)
                server_overheads.append(
                    resp.timing.total_ms - resp.timing.queue_ms - resp.timing.inference_ms
                )
                batches.append(resp.timing.batch_size)

        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(concurrency)))
        wall = time.perf_counter() - t0
    return latencies, overheads, server_overheads, batches, wall


def _token(redis_url: str | None) -> str | None:
    if not redis_url:
        return None
    with redis.Redis.from_url(redis_url) as client:
        return register_device(client, "bench")


def _measure(
    services: dict[int, Service], token: str | None, clips: list[tuple[bytes, int]], total: int
) -> list[Run]:
    """Each concurrency level against each server, back to back; one JSON line per run as it finishes."""
    runs = []
    for conc in CONCURRENCY:
        for max_batch, svc in services.items():
            lat, over, server_over, batches, wall = asyncio.run(
                _drive(svc.port, token, clips, conc, total // conc, f"b{max_batch}c{conc}")
            )
            run = Run(
                conc,
                max_batch,
                len(lat),
                len(lat) / wall,
                float(np.percentile(lat, 50)),
                float(np.percentile(lat, 95)),
                float(np.percentile(over, 50)),
                float(np.percentile(over, 95)),
                float(np.percentile(server_over, 95)),
                float(np.mean(batches)),
            )
            runs.append(run)
            print(json.dumps(asdict(run)), flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--quick", action="store_true", help="16 segments per run instead of 32 (a rough figure)")
    p.add_argument("--model", default=str(ROOT / "models" / "base.pt"))
    p.add_argument("--batched", type=int, default=16, help="max_batch of the batched configuration")
    p.add_argument("--threads", type=int, default=0, help="server torch threads (0: torch's default)")
    p.add_argument("--no-redis", action="store_true", help="run without Redis (and without auth)")
    p.add_argument("--quantize", choices=("none", "int8"), default="none",
                   help="the batched server's --quantize (the one-at-a-time baseline stays fp32)")
    p.add_argument("--pack", action="store_true", help="the batched server packs short clips (--pack)")
    args = p.parse_args(argv)

    # Every run sends the same clips (0..total-1), split over its clients, so runs compare like for like;
    # the two servers run side by side and each pair is measured back to back, so a busy neighbour on a
    # shared machine skews both sides of a comparison alike.
    total = 16 if args.quick else 32
    clips = _clips(total)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="cloud-bench-") as tmp:
        redis_server = None
        redis_url = None
        if not args.no_redis:
            redis_server = RedisServer(Path(tmp) / "redis")
            redis_server.start()
            redis_url = redis_server.url
        token = _token(redis_url)
        services: dict[int, Service] = {}
        try:
            for max_batch in (args.batched, 1):
                tuned = max_batch != 1  # the one-at-a-time baseline stays plain fp32
                services[max_batch] = Service(args.model, max_batch, redis_url, Path(tmp), args.threads,
                                              args.quantize if tuned else "none", args.pack and tuned)
            for max_batch, svc in services.items():
                svc.wait()
                asyncio.run(_drive(svc.port, token, clips, 2, 1, f"warm{max_batch}"))  # first-call costs
            runs = _measure(services, token, clips, total)
        finally:
            for svc in services.values():
                svc.stop()
            if redis_server is not None:
                redis_server.stop()

    def rate(mb: int) -> float:
        return next(r.segments_per_s for r in runs if r.concurrency == 16 and r.max_batch == mb)

    doc = {
        "runs": [asdict(r) for r in runs],
        "speedup_at_16": rate(args.batched) / rate(1),
        "overhead_p95_ms_max": max(r.overhead_p95_ms for r in runs),
        "quick": args.quick,
        "batched_quantize": args.quantize,
        "batched_pack": args.pack,
        "cpu_count": os.cpu_count(),
        "redis": redis_url is not None,
        "threads": args.threads,
        "batched_max_batch": args.batched,
    }
    print(
        f"speedup at 16 concurrent: {doc['speedup_at_16']:.2f}x; "
        f"worst overhead p95: {doc['overhead_p95_ms_max']:.1f} ms"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
