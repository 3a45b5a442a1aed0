"""The cloud model's CPU variants side by side, in one process, same audio, same batches: fp32 (the baseline),
`--quantize int8` (cloud_service/asr/quantize.py), `--pack` (cloud_service/asr/packing.py) and both. Model time,
speed-up over fp32, WER per condition, and transcripts identical to fp32's.

    python -m bench.cloud_variants [--model models/base.pt] [--n 48] [--batch 8] [--threads 0]

Conditions: English Asterisk prompts clean and in pink noise at 10 dB SNR (seeded), the device's language (en)
given, beam 5 with the temperature fallback, as `cloud-service serve` decodes. Goal (issue 15): <= 0.3 points of
WER change per condition, >= 3x throughput with packing and batching. Speed here is model time only;
`bench.cloud_throughput --quantize int8 --pack` measures the whole server under concurrent clients.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cloud_service.asr.model import AsrModel, AsrRequest
from evaluation.quick_sets import english_conditions, text_wer


def decode(model: AsrModel, audio: list[np.ndarray], batch: int, desc: str) -> tuple[list[str], float]:
    texts: list[str] = []
    seconds = 0.0
    for i in tqdm(range(0, len(audio), batch), desc=desc, unit="batch", leave=False):
        items = [AsrRequest(x, "en") for x in audio[i: i + batch]]
        t0 = time.perf_counter()
        texts += [r.text for r in model.transcribe_batch(items)]
        seconds += time.perf_counter() - t0
    return texts, seconds


VARIANTS = {"fp32": ("none", False), "int8": ("int8", False), "pack": ("none", True), "pack+int8": ("int8", True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("models/base.pt"))
    ap.add_argument("--n", type=int, default=48, help="English prompts per condition")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)} (fp32 always runs)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    names = ["fp32", *[v for v in args.variants.split(",") if v != "fp32"]]
    models = {v: AsrModel.load(args.model, "cpu", quantize=VARIANTS[v][0], pack=VARIANTS[v][1]) for v in names}
    print(f"{args.model.name}, CPU, {torch.get_num_threads()} threads, batches of {args.batch}, beam 5\n")
    print("| condition | variant | clips | audio s | model s | speed-up | WER | change (points) | identical |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for cond, (audio, refs) in english_conditions(args.n, args.seed).items():
        seconds = sum(len(x) for x in audio) / 16000
        base: tuple[list[str], float] | None = None
        for v in names:
            decode(models[v], audio[:2], 2, "warm-up")  # first-call costs (allocations, kernel choice)
            texts, t = decode(models[v], audio, args.batch, f"{cond}: {v}")
            base = base or (texts, t)
            same = sum(x == y for x, y in zip(base[0], texts, strict=True))
            w, w0 = text_wer(refs, texts), text_wer(refs, base[0])
            print(f"| {cond} | {v} | {len(refs)} | {seconds:.0f} | {t:.1f} | {base[1] / t:.2f}x | {w:.2%} | "
                  f"{100 * (w - w0):+.2f} | {same}/{len(refs)} |", flush=True)
        for v in names:
            st = models[v].pack_stats
            if st.windows:
                print(f"<!-- {cond} {v}: {st.clips} clips in {st.windows} packed windows so far, {st.redone} "
                      "decoded again alone -->")


if __name__ == "__main__":
    main()
