"""Escalation path figures: bytes and WER cost of each wire encoding, and segment-to-revision latency.

    python -m bench.escalation --json bench/out/escalation.json [--clips 12]

Starts Redis and a real `cloud-service serve` (models/base.pt) on loopback. Part 1 sends the same segments to the
cloud as PCM16, FLAC and Opus and scores the cloud's text. Part 2 runs the real `edge-node run` daemon on a file of
prompts (English, English in noise, Spanish, French) and reports, from its events, the share escalated and the time
from each escalated segment's edge event to its cloud revision.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_node.adapters.cloud_client import CloudClientConfig, EscalationClient, audio_message
from evaluation.asterisk import prompts
from evaluation.degrade import mix_at_snr, white_noise
from evaluation.scoring import word_errors, words
from proto.asr.v1 import asr_pb2 as pb
from shared.audio_files import load_audio
from shared.wire_audio import WireEncoding
from testkit.escalation import CloudProcess, daemon_cmd, read_events, run_daemon, speech_file, tally
from testkit.servers import RedisServer

DEVICE = "bench-edge"


def _clips(n: int) -> list[tuple[str, str, np.ndarray]]:
    """(lang, reference, 16 kHz samples): Spanish, French and English at 5 dB SNR white noise."""
    rng = np.random.default_rng(11)
    out: list[tuple[str, str, np.ndarray]] = []
    for lang in ("es", "fr", "en"):
        for p in prompts(lang, min_words=4)[3 : 3 + n // 3]:
            x = load_audio(p.wav)
            if lang == "en":
                x = mix_at_snr(x, white_noise(x.size, rng), 5.0).astype(np.float32)
            out.append((lang, p.text, x))
    return out


def wire_cost(target: str, token: str, n: int) -> dict[str, Any]:
    client = EscalationClient(CloudClientConfig(target, DEVICE, token, timeout_s=60))
    clips = _clips(n)
    result: dict[str, Any] = {}
    for enc in WireEncoding:
        sent, seconds, errors, ref_words = 0, 0.0, 0, 0
        for i, (lang, ref, x) in enumerate(clips):
            msg = audio_message(x, enc)
            req = pb.TranscribeRequest(segment_id=f"{DEVICE}-wire-{enc.value}-{i}-{time.time_ns()}", device_id=DEVICE,
                                       audio=msg, language=lang)
            resp = client.transcribe(req)
            sent += len(msg.data)
            seconds += x.size / 16000
            r, h = words(ref, lang), words(resp.text, lang)
            errors += word_errors(r, h)
            ref_words += len(r)
        result[enc.value] = {"bytes_per_second": round(sent / seconds), "wer": round(errors / ref_words, 4),
                             "clips": len(clips), "audio_s": round(seconds, 1)}
        print(f"{enc.value:6s} {sent / seconds:8.0f} B/s  cloud WER {100 * errors / ref_words:5.1f} %")
    client.close()
    return result


def daemon_latency(target: str, token_file: Path, work: Path) -> dict[str, Any]:
    wavs = [p.wav for lang in ("en", "es", "fr") for p in prompts(lang, min_words=4)[10:14]]
    audio = speech_file(work / "mix.wav", wavs)
    events = work / "events.jsonl"
    t0 = time.time()
    rc = run_daemon(daemon_cmd(str(audio), work / "state", events, DEVICE, target, token_file), work / "edge.log",
                    timeout=900)
    evs = read_events(events)
    escalated, _, revisions = tally(evs)
    seg_ts = {e["segment_id"]: e["ts"] for e in evs if e["type"] == "segment"}
    lat = sorted(e["ts"] - seg_ts[e["segment_id"]] for e in evs if e["type"] == "revision")
    seg_len = {e["segment_id"]: e["end"] - e["start"] for e in evs if e["type"] == "segment"}
    esc_s = sum(seg_len[s] for s in escalated)
    out = {
        "rc": rc, "wall_s": round(time.time() - t0, 1), "segments": len(seg_ts), "escalated": len(escalated),
        "escalated_seconds_fraction": round(esc_s / max(1e-9, sum(seg_len.values())), 3),
        "revisions": sum(revisions.values()), "duplicates": sum(n - 1 for n in revisions.values()),
        "latency_p50_s": round(statistics.median(lat), 3) if lat else None,
        "latency_p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3) if lat else None,
    }
    print(f"daemon: {out}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--clips", type=int, default=12, help="clips for the wire comparison (split es/fr/en-noisy)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-escalation-") as tmp:
        work = Path(tmp)
        redis = RedisServer(work / "redis")
        redis.start()
        cloud = CloudProcess(work / "cloud", redis.url)
        cloud.start()
        try:
            token = cloud.add_device(DEVICE)
            (work / "token").write_text(token)
            report = {"wire": wire_cost(cloud.target, token, args.clips),
                      "daemon": daemon_latency(cloud.target, work / "token", work)}
        finally:
            cloud.stop()
            redis.stop()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
