"""Soak: many simulated devices escalating against one cloud for minutes, plus one real edge daemon.

    python -m bench.soak --json bench/out/soak.json [--devices 100] [--duration 300] [--interval 300]

Starts Redis and a real `cloud-service serve` (models/base.pt unless --model) on loopback, registers one token
per simulated device, and runs:

- `--devices` simulated devices (grpc.aio, one channel each). Each sends a real speech prompt as PCM16 under a
  fresh segment id about every `--interval` seconds (jittered), and retries the SAME id on a retryable status
  (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED) with backoff, as an edge does, until it is answered.
- one real `edge-node run` daemon fed real-time speech (English and Spanish prompts, so some segments escalate)
  on stdin for the whole run, escalating to the same cloud.

Reports, for the cloud process and the edge process: RSS after warm-up, peak and final, and the growth from
warm-up to the end (goal: at most 10 %); every status seen, counted per attempt; and the check that every
escalation got exactly one answer (simulated devices: exactly one OK reply per segment id, the same text on a
repeat; the edge: exactly one revision per escalated segment).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil

from evaluation.asterisk import prompts
from proto.asr.v1 import asr_pb2, asr_pb2_grpc
from shared.audio_files import load_audio
from testkit.escalation import CloudProcess, daemon_cmd, read_events, tally
from testkit.servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
EDGE_DEVICE = "soak-edge"
WARMUP_S = 30.0  # RSS settles (model, allocator arenas, first batches) before the baseline is taken


@dataclass
class RssTrace:
    """RSS samples of one process, in MiB."""

    samples: list[tuple[float, float]] = field(default_factory=list)

    def add(self, t: float, pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            rss = psutil.Process(pid).memory_info().rss / 2**20
            if rss > 0:  # a process that has exited (a zombie) reads as 0
                self.samples.append((t, rss))

    def at(self, t: float) -> float:
        return next((r for ts, r in self.samples if ts >= t), self.samples[-1][1])

    def summary(self, warmup_s: float, half_s: float) -> dict[str, float | None]:
        """RSS after warm-up, at half time, at its peak and at the end; growth from warm-up to the end, and over
        the second half alone (allocator caches fill early, as batches of new shapes arrive; a leak keeps
        growing)."""
        if not self.samples:
            return {"warm_mib": None, "half_mib": None, "peak_mib": None, "final_mib": None, "growth": None,
                    "growth_second_half": None}
        warm, half, final = self.at(warmup_s), self.at(half_s), self.samples[-1][1]
        return {"warm_mib": round(warm, 1), "half_mib": round(half, 1),
                "peak_mib": round(max(r for _, r in self.samples), 1), "final_mib": round(final, 1),
                "growth": round((final - warm) / warm, 4), "growth_second_half": round((final - half) / half, 4)}


@dataclass
class Tally:
    statuses: Counter[str] = field(default_factory=Counter)
    answers: dict[str, list[str]] = field(default_factory=dict)  # segment id -> texts of its OK replies
    latencies_ms: list[float] = field(default_factory=list)


class SoakCloud(CloudProcess):
    """The test kit's cloud process with the model of this run."""

    def __init__(self, workdir: Path, redis_url: str, model: str) -> None:
        super().__init__(workdir, redis_url)
        self.model = model

    def command(self) -> list[str]:
        cmd = super().command()
        cmd[cmd.index("--model") + 1] = self.model
        return cmd

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def _speech() -> tuple[list[bytes], np.ndarray]:
    """PCM16 of English prompts (the simulated devices' clips) and an en/es mix for the edge's stdin."""
    en, es = prompts("en", min_words=4)[:24], prompts("es", min_words=4)[:8]
    if not en or not es:
        raise SystemExit("the Asterisk English and Spanish prompts are needed (run `make setup`)")
    clips = [(np.clip(load_audio(p.wav), -1, 1) * 32767).astype("<i2").tobytes() for p in en]
    gap = np.zeros(8000, np.float32)
    mix = [part for p in (en[:8] + es) for part in (load_audio(p.wav), gap)]
    random.Random(3).shuffle(mix)
    return clips, np.concatenate(mix)


async def _device(stub: Any, name: str, token: str, clips: list[bytes], stop_at: float, interval: float,
                  tally: Tally, rng: random.Random, give_up_at: float) -> None:
    metadata = [("authorization", f"Bearer {token}")]
    seq = 0
    await asyncio.sleep(rng.uniform(0, interval))  # spread the first requests
    while time.monotonic() < stop_at:
        seq += 1
        seg = f"{name}-{seq}"
        req = asr_pb2.TranscribeRequest(segment_id=seg, device_id=name, language="en", audio=asr_pb2.Audio(
            encoding=asr_pb2.Audio.PCM16, sample_rate=16_000, data=clips[rng.randrange(len(clips))]))
        backoff = 0.5
        while time.monotonic() < give_up_at:  # an edge retries the same id until answered; so does this one
            t0 = time.perf_counter()
            try:
                resp = await stub.Transcribe(req, metadata=metadata, timeout=60)
            except grpc.aio.AioRpcError as err:
                tally.statuses[err.code().name] += 1
                tally.answers.setdefault(seg, [])
                if err.code() not in RETRYABLE:
                    break
                await asyncio.sleep(backoff * rng.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 10.0)
                continue
            tally.statuses["OK"] += 1
            tally.latencies_ms.append((time.perf_counter() - t0) * 1000)
            tally.answers.setdefault(seg, []).append(resp.text)
            break
        # The next escalation, or the end of the run, whichever comes first.
        await asyncio.sleep(min(interval * rng.uniform(0.5, 1.5), max(0.0, stop_at - time.monotonic())))


async def _fleet(target: str, tokens: dict[str, str], clips: list[bytes], duration: float, interval: float,
                 drain: float, tally: Tally) -> None:
    stop_at = time.monotonic() + duration
    channels = [grpc.aio.insecure_channel(target) for _ in tokens]
    try:
        await asyncio.gather(*(
            _device(asr_pb2_grpc.EscalationServiceStub(ch), name, token, clips, stop_at, interval, tally,
                    random.Random(i), stop_at + drain)
            for i, (ch, (name, token)) in enumerate(zip(channels, tokens.items(), strict=True))
        ))
    finally:
        for ch in channels:
            await ch.close()


def _feed_realtime(proc: subprocess.Popen[bytes], audio: np.ndarray, stop_at: float) -> None:
    """Write `audio` (looped) to the daemon's stdin at real-time speed until `stop_at`, then close it."""
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = 16_000 * 2 // 10  # 100 ms
    pos, t0, sent = 0, time.monotonic(), 0
    assert proc.stdin is not None
    try:
        while time.monotonic() < stop_at:
            proc.stdin.write(pcm[pos:pos + step])
            pos = (pos + step) % len(pcm)
            sent += step
            time.sleep(max(0.0, t0 + sent / 32_000 - time.monotonic()))
    except BrokenPipeError:
        return
    finally:
        proc.stdin.close()


def _edge_check(events_path: Path) -> dict[str, Any]:
    escalated, final, revisions = tally(read_events(events_path))
    return {"segments": len(escalated) + len(final), "escalated": len(escalated),
            "answered_once": sum(revisions[s] == 1 for s in escalated),
            "unanswered": sorted(s for s in escalated if revisions[s] == 0)[:10],
            "answered_twice": sorted(s for s, n in revisions.items() if n > 1)[:10]}


def _sample(stop: threading.Event, t0: float, traces: dict[str, tuple[int, RssTrace]]) -> None:
    while not stop.wait(1.0):
        for pid, trace in traces.values():
            trace.add(time.monotonic() - t0, pid)


def _start_edge(tmp: Path, cloud: SoakCloud) -> tuple[subprocess.Popen[bytes], Path]:
    token_file = tmp / "edge.token"
    token_file.write_text(cloud.add_device(EDGE_DEVICE))
    token_file.chmod(0o600)
    events = tmp / "edge-events.jsonl"
    cmd = daemon_cmd("-", tmp / "edge-state", events, EDGE_DEVICE, cloud.target, token_file,
                     extra=("--wire", "flac", "--timeout", "60"))
    log = (tmp / "edge.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)
    return proc, events


def _device_check(t: Tally) -> dict[str, Any]:
    once = sum(len(texts) == 1 for texts in t.answers.values())
    lat = sorted(t.latencies_ms)
    return {"escalations": len(t.answers), "answered_once": once,
            "unanswered": sorted(s for s, texts in t.answers.items() if not texts)[:10],
            "answered_twice": sorted(s for s, texts in t.answers.items() if len(texts) > 1)[:10],
            "statuses": dict(t.statuses),
            "latency_p50_ms": round(lat[len(lat) // 2], 1) if lat else None,
            "latency_p95_ms": round(lat[int(len(lat) * 0.95)], 1) if lat else None}


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    clips, edge_audio = _speech()
    redis_server = RedisServer(tmp / "redis")
    redis_server.start()
    cloud = SoakCloud(tmp / "cloud", redis_server.url, args.model)
    try:
        cloud.start()
        print(f"cloud up on {cloud.target}; registering {args.devices} devices", flush=True)
        tokens = {f"soak-{i:03d}": cloud.add_device(f"soak-{i:03d}") for i in range(args.devices)}
        edge, events = _start_edge(tmp, cloud)
        t0 = time.monotonic()
        traces = {"cloud": (cloud.pid, RssTrace()), "edge": (edge.pid, RssTrace())}
        stop = threading.Event()
        sampler = threading.Thread(target=_sample, args=(stop, t0, traces), daemon=True)
        feeder = threading.Thread(target=_feed_realtime, args=(edge, edge_audio, t0 + args.duration), daemon=True)
        sampler.start()
        feeder.start()
        devices = Tally()
        asyncio.run(_fleet(cloud.target, tokens, clips, args.duration, args.interval, args.drain, devices))
        feeder.join()
        try:  # stdin closed: the daemon drains its outbox and exits
            edge.wait(timeout=max(10.0, t0 + args.duration + args.drain - time.monotonic()))
        except subprocess.TimeoutExpired:
            edge.terminate()
            edge.wait(60)
        stop.set()
        sampler.join()
        wall = time.monotonic() - t0
    finally:
        if "edge" in locals() and edge.poll() is None:
            edge.kill()
        cloud.stop()
        redis_server.stop()
    return {
        "devices": args.devices, "duration_s": args.duration, "interval_s": args.interval, "drain_s": args.drain,
        "wall_s": round(wall, 1),
        "model": args.model, "warmup_s": args.warmup,
        "cloud_rss": traces["cloud"][1].summary(args.warmup, args.duration / 2),
        "edge_rss": traces["edge"][1].summary(args.warmup, args.duration / 2),
        "simulated_devices": _device_check(devices), "edge": {**_edge_check(events), "exit_code": edge.returncode},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--duration", type=float, default=300.0, help="seconds of escalating")
    p.add_argument("--interval", type=float, default=300.0, help="mean seconds between one device's escalations")
    p.add_argument("--warmup", type=float, default=WARMUP_S,
                   help="seconds before the RSS baseline is taken (allocator caches fill as batch shapes arrive)")
    p.add_argument("--drain", type=float, default=300.0,
                   help="seconds after the run for escalations still in flight to be answered (then: unanswered)")
    p.add_argument("--model", default=str(ROOT / "models" / "base.pt"))
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    if args.devices < 1 or args.duration <= 0 or args.interval <= 0:
        p.error("--devices, --duration and --interval must be positive")
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        doc = run(args, Path(tmp))
    print(json.dumps(doc, indent=2))
    sim, edge, cloud_rss = doc["simulated_devices"], doc["edge"], doc["cloud_rss"]
    print(f"cloud RSS growth {cloud_rss['growth']:+.1%} ({cloud_rss['growth_second_half']:+.1%} in the second half; "
          f"peak {cloud_rss['peak_mib']} MiB), edge RSS growth {doc['edge_rss']['growth']:+.1%} "
          f"({doc['edge_rss']['growth_second_half']:+.1%}); devices: {sim['answered_once']}/{sim['escalations']} "
          f"answered exactly once; edge: {edge['answered_once']}/{edge['escalated']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
