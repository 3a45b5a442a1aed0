"""Confidence calibration data: segment features and verdicts of the edge engine on Asterisk en/es/fr prompts
and music on hold.

    python -m bench.edge_confidence [--n 60] [--json OUT]

Prints, per language, the share of prompts with at least one escalated segment (goals: es/fr >= 95 %,
en <= 10 %) and, for music, how many words were emitted (goal: 0).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import asterisk
from edge_node.config import EdgeConfig
from edge_node.transcribe import EdgeTranscriber


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60, help="prompts per language (random sample, seed 0)")
    ap.add_argument("--model-dir", type=Path, default=EdgeConfig().model_dir)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--music-s", type=float, default=60.0, help="seconds of each music file to use")
    ap.add_argument("--min-words", type=int, default=4, help="prompts with at least this many words")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    engine = EdgeTranscriber(EdgeConfig(model_dir=args.model_dir, threads=args.threads))
    rows = []
    summary: dict[str, Any] = {}
    for lang in ("en", "es", "fr"):
        ps = asterisk.prompts(lang, min_words=args.min_words)
        random.Random(0).shuffle(ps)
        flagged = 0
        for p in ps[: args.n]:
            r = engine.transcribe_file(p.wav)
            esc = any(s.escalate for s in r.segments) or not r.segments
            flagged += esc
            for s in r.segments:
                d = asdict(s)
                d.pop("words")
                rows.append({"lang": lang, "id": p.id, "ref": p.text, **d})
        n = min(args.n, len(ps))
        summary[lang] = {"prompts": n, "escalated": flagged, "rate": round(flagged / max(n, 1), 3)}
        print(f"{lang}: {flagged}/{n} prompts escalated ({flagged / max(n, 1):.1%})", flush=True)
    from shared import audio

    words = 0
    for f in asterisk.music_files():
        samples = audio.load_audio(f)[: int(args.music_s * audio.SAMPLE_RATE)]
        r = engine.transcribe(samples)
        n_words = sum(len(s.words) for s in r.segments)
        words += n_words
        print(f"music {f.name}: {len(r.segments)} segments, {n_words} words {r.text[:60]!r}", flush=True)
    summary["music_words"] = words
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "segments": rows}, indent=1))


if __name__ == "__main__":
    main()
