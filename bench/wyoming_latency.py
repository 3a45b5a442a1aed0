"""End-of-speech -> transcript latency of `edge-node wyoming`, edge-only and escalated utterances side by side.

    python -m bench.wyoming_latency [--n 20] [--cloud-deadline-s 10] [--threads 1] [--json OUT]

Starts a real Redis, a registered device and `cloud-service serve` (models/base.pt) on loopback
(testkit.local_cloud), then the real `edge-node wyoming --cloud ... --budget 1` process. Sends `--n` English
Asterisk prompts (the edge is confident: not escalated) and `--n` Spanish ones (the English-only edge model
doubts them: escalated), interleaved, one connection each, over the wyoming package's AsyncTcpClient:
transcribe -> audio-start -> 100 ms audio-chunks as fast as the socket takes them -> audio-stop. The clock
starts when audio-stop is written and stops when the `transcript` event is read. Each utterance is classed by
what the server says in the transcript's context: `edge` (not escalated), `cloud` (escalated, the cloud's text
came within the deadline) or `edge fallback` (escalated, the deadline passed or the call failed). One
English warm-up utterance is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient

from evaluation.asterisk import Prompt, prompts
from shared.audio_files import load_audio
from testkit.local_cloud import local_cloud
from testkit.servers import free_port, port_open
from testkit.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
DEVICE = "bench-wyoming"
RATE = 16000
CLASSES = ("edge", "cloud", "edge fallback")


def _speech(lang: str, n: int, max_s: float) -> list[tuple[Prompt, bytes]]:
    """The first `n` prompts of `lang` (>= 4 words, at most `max_s` long) as 16 kHz PCM16."""
    out: list[tuple[Prompt, bytes]] = []
    for p in prompts(lang, min_words=4):
        if sf.info(str(p.wav)).duration > max_s:
            continue
        x = load_audio(p.wav)
        out.append((p, (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()))
        if len(out) == n:
            break
    return out


@contextlib.contextmanager
def wyoming(model_dir: Path, log: Path, target: str, token_file: Path, deadline_s: float,
            threads: int) -> Iterator[int]:
    """The real `edge-node wyoming` process escalating to `target`; yields its port."""
    port = free_port()
    cmd = [sys.executable, "-m", "edge_node", "wyoming", "--uri", f"tcp://127.0.0.1:{port}", "--model-dir",
           str(model_dir), "--threads", str(threads), "--device-id", DEVICE, "--cloud", target, "--token-file",
           str(token_file), "--cloud-deadline-s", str(deadline_s), "--budget", "1"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"edge-node wyoming exited with {proc.returncode}: {log.read_text()[-800:]}")
        return port_open(port)

    try:
        wait_until(up, 120, "edge-node wyoming to listen", interval=0.2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def one(port: int, pcm: bytes) -> tuple[float, Transcript]:
    """(seconds from audio-stop written to transcript read, the transcript) for one utterance."""
    client = AsyncTcpClient("127.0.0.1", port)
    await client.connect()
    try:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
        step = RATE // 10 * 2
        for i in range(0, len(pcm), step):
            await client.write_event(AudioChunk(rate=RATE, width=2, channels=1, audio=pcm[i : i + step]).event())
        await client.write_event(AudioStop().event())
        t0 = time.perf_counter()
        while True:
            ev = await asyncio.wait_for(client.read_event(), 300)
            if ev is None:
                raise RuntimeError("the server closed the connection before the transcript")
            if Transcript.is_type(ev.type):
                return time.perf_counter() - t0, Transcript.from_event(ev)
    finally:
        await client.disconnect()


def cloud_calls(log: str) -> list[float]:
    """The gRPC round trips the server logged, in time ("cloud answered in S s") or late ("after S s")."""
    return [float(m) for m in re.findall(r"escalation \S+: cloud answered (?:in|after) ([0-9.]+) s", log)]


def classify(t: Transcript) -> str:
    ctx = t.context or {}
    if ctx.get("source") == "cloud":
        return "cloud"
    return "edge fallback" if ctx.get("segment_id") else "edge"


def summary(latencies: list[float]) -> dict[str, Any]:
    if not latencies:
        return {"count": 0}
    ms = np.asarray(latencies) * 1000
    return {"count": len(latencies), "mean_ms": round(float(ms.mean()), 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1)}


def table(rows: dict[str, dict[str, Any]]) -> str:
    lines = ["| utterances | count | mean ms | p50 ms | p95 ms |", "|---|---:|---:|---:|---:|"]
    for name, s in rows.items():
        if s["count"]:
            lines.append(f"| {name} | {s['count']} | {s['mean_ms']:.0f} | {s['p50_ms']:.0f} | {s['p95_ms']:.0f} |")
        else:
            lines.append(f"| {name} | 0 | - | - | - |")
    return "\n".join(lines)


def measure(port: int, en: list[tuple[Prompt, bytes]], es: list[tuple[Prompt, bytes]]) -> dict[str, Any]:
    asyncio.run(one(port, en[0][1]))  # warm-up: first decode, first channel connect
    by_class: dict[str, list[float]] = {c: [] for c in CLASSES}
    by_lang: dict[str, dict[str, int]] = {"en": dict.fromkeys(CLASSES, 0), "es": dict.fromkeys(CLASSES, 0)}
    order = [u for pair in zip(en, es, strict=False) for u in pair] + en[len(es):] + es[len(en):]
    for prompt, pcm in order:
        seconds, t = asyncio.run(one(port, pcm))
        cls = classify(t)
        by_class[cls].append(seconds)
        by_lang[prompt.lang][cls] += 1
    audio_s = {lang: round(sum(len(p) / 2 / RATE for _, p in group), 1) for lang, group in (("en", en), ("es", es))}
    return {"classes": {c: summary(v) for c, v in by_class.items()}, "by_language": by_lang, "audio_s": audio_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20, help="English and Spanish utterances each (default 20)")
    ap.add_argument("--max-s", type=float, default=8.0, help="longest prompt used, seconds (default 8)")
    ap.add_argument("--cloud-deadline-s", type=float, default=10.0, help="edge-node wyoming's (default 10)")
    ap.add_argument("--threads", type=int, default=1, help="edge onnxruntime threads (default 1)")
    ap.add_argument("--cloud-threads", type=int, default=2, help="cloud torch threads (default 2)")
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "base.pt", help="cloud checkpoint")
    ap.add_argument("--model-dir", type=Path, default=ROOT / "models" / "tiny.en-int8", help="edge artifact")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    en, es = _speech("en", args.n, args.max_s), _speech("es", args.n, args.max_s)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-wyoming-") as tmp:
        work = Path(tmp)
        with local_cloud(args.model, work, DEVICE, threads=args.cloud_threads) as (target, token):
            token_file = work / "device.token"
            token_file.write_text(token + "\n")
            token_file.chmod(0o600)
            log = work / "wyoming.log"
            with wyoming(args.model_dir, log, target, token_file, args.cloud_deadline_s, args.threads) as port:
                report = measure(port, en, es)
            report["cloud_call"] = summary(cloud_calls(log.read_text(errors="replace")))
    report.update(n=args.n, cloud_deadline_s=args.cloud_deadline_s, edge_threads=args.threads,
                  cloud_threads=args.cloud_threads, cores=os.cpu_count(), wall_s=round(time.monotonic() - started, 1))
    names = {"edge": "edge only (not escalated)", "cloud": "escalated, cloud text in time",
             "edge fallback": "escalated, edge text (late / failed)"}
    rows = {names[c]: s for c, s in report["classes"].items()}
    rows["cloud call alone, in time or late (server log)"] = report["cloud_call"]
    print(table(rows))
    print(f"by language: {report['by_language']}; audio s: {report['audio_s']}; wall {report['wall_s']} s "
          f"({report['cores']} cores, edge threads {args.threads}, cloud threads {args.cloud_threads})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
