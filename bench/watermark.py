"""Does the fleet watermark (fleetctl/models/watermark.py) change what the edge hears? The shipped artifact against
a watermarked copy of it, same audio, same settings, one run: WER per condition, identical transcripts, and the
detector's answer for the right key, another key and the unmarked original.

    python -m bench.watermark [--n 200] [--model-dir models/tiny.en-int8] [--threads 1]

Conditions: English Asterisk prompts clean, and the same in pink noise at 10 dB SNR (seeded). Goal: WER change
<= 0.1 points per condition.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_node.engine.config import EdgeConfig
from edge_node.engine.transcriber import EdgeTranscriber
from evaluation.quick_sets import english_conditions, text_wer
from fleetctl.models.watermark import detect, embed


def run(model_dir: Path, threads: int, audio: list[np.ndarray], desc: str) -> list[str]:
    engine = EdgeTranscriber(EdgeConfig(model_dir=model_dir, threads=threads, word_timestamps=False))
    return [engine.transcribe(x).text for x in tqdm(audio, desc=desc, unit="clip", leave=False)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="English prompts per condition")
    ap.add_argument("--model-dir", type=Path, default=EdgeConfig().model_dir)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    # Keys from the seed: the same marked weights on every run (a real fleet key is random: init-key).
    key, other = (hashlib.sha256(f"bench-{k}-{args.seed}".encode()).digest() for k in ("ours", "other"))
    with tempfile.TemporaryDirectory(prefix="watermark-bench-") as tmp:
        marked = Path(tmp) / "marked"
        shutil.copytree(args.model_dir, marked)
        bits = embed(marked, key)
        checks = {"marked, right key": detect(marked, key), "marked, other key": detect(marked, other),
                  "original, right key": detect(args.model_dir, key)}
        print(f"embedded {bits} bits in {marked.name}; detector:")
        for name, d in checks.items():
            print(f"  {name:<20} {d.matched}/{d.bits} match ({d.share:.1%}, {d.sigmas:.1f} sigma) -> "
                  f"{'present' if d.present else 'absent'}")
        print("\n| condition | clips | WER original | WER watermarked | change (points) | identical texts |")
        print("|---|---:|---:|---:|---:|---:|")
        diffs: list[tuple[str, str, str, str]] = []
        for cond, (audio, refs) in english_conditions(args.n, args.seed).items():
            a = run(args.model_dir, args.threads, audio, f"{cond}: original")
            b = run(marked, args.threads, audio, f"{cond}: watermarked")
            wa, wb = text_wer(refs, a), text_wer(refs, b)
            same = sum(x == y for x, y in zip(a, b, strict=True))
            print(f"| {cond} | {len(refs)} | {wa:.2%} | {wb:.2%} | {100 * (wb - wa):+.2f} | {same}/{len(refs)} |",
                  flush=True)
            diffs.extend((cond, r, x, y) for r, x, y in zip(refs, a, b, strict=True) if x != y)
        print("\ntranscripts that differ (reference | original | watermarked):")
        for cond, r, x, y in diffs:
            print(f"  [{cond}] {r!r} | {x!r} | {y!r}")


if __name__ == "__main__":
    main()
