"""The cloud model fp32 against `--quantize int8` (cloud_service/asr/quantize.py), in one process, same audio, same
batches: decode time and WER per condition, and how many transcripts are identical.

    python -m bench.cloud_quantize [--model models/base.pt] [--n 48] [--batch 8] [--threads 0]

Conditions: English Asterisk prompts clean and in pink noise at 10 dB SNR (seeded), the device's language (en)
given, beam 5 with the temperature fallback, as `cloud-service serve` decodes. Goal (issue 15): <= 0.3 points of
WER change per condition. Speed here is model time only; `bench.cloud_throughput --quantize int8` measures the
whole server.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cloud_service.asr.model import AsrModel, AsrRequest
from evaluation import asterisk, degrade
from evaluation.scoring import word_errors, words
from shared import audio_files


def conditions(n: int, seed: int) -> dict[str, tuple[list[np.ndarray], list[str]]]:
    prompts = asterisk.prompts("en", min_words=2)[:n]
    clean = [audio_files.load_audio(p.wav) for p in prompts]
    rng = np.random.default_rng(seed)
    noisy = [degrade.limit_peak(degrade.mix_at_snr(x, degrade.pink_noise(len(x), rng), 10.0)) for x in clean]
    texts = [p.text for p in prompts]
    return {"clean": (clean, texts), "pink noise 10 dB": (noisy, texts)}


def decode(model: AsrModel, audio: list[np.ndarray], batch: int, desc: str) -> tuple[list[str], float]:
    texts: list[str] = []
    seconds = 0.0
    for i in tqdm(range(0, len(audio), batch), desc=desc, unit="batch", leave=False):
        items = [AsrRequest(x, "en") for x in audio[i: i + batch]]
        t0 = time.perf_counter()
        texts += [r.text for r in model.transcribe_batch(items)]
        seconds += time.perf_counter() - t0
    return texts, seconds


def wer(refs: list[str], hyps: list[str]) -> float:
    errors = sum(word_errors(words(r, "en"), words(h, "en")) for r, h in zip(refs, hyps, strict=True))
    return errors / max(1, sum(len(words(r, "en")) for r in refs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("models/base.pt"))
    ap.add_argument("--n", type=int, default=48, help="English prompts per condition")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    models = {q: AsrModel.load(args.model, "cpu", quantize=q) for q in ("none", "int8")}
    audio_s = {}
    print(f"{args.model.name}, CPU, {torch.get_num_threads()} threads, batches of {args.batch}\n")
    print("| condition | clips | audio s | fp32 s | int8 s | speed-up | WER fp32 | WER int8 | change (points) "
          "| identical |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cond, (audio, refs) in conditions(args.n, args.seed).items():
        audio_s[cond] = sum(len(x) for x in audio) / 16000
        decode(models["int8"], audio[:2], 2, "warm-up")  # first-call costs (allocations, kernel choice)
        decode(models["none"], audio[:2], 2, "warm-up")
        (a, ta), (b, tb) = (decode(models[q], audio, args.batch, f"{cond}: {q}") for q in ("none", "int8"))
        wa, wb = wer(refs, a), wer(refs, b)
        same = sum(x == y for x, y in zip(a, b, strict=True))
        print(f"| {cond} | {len(refs)} | {audio_s[cond]:.0f} | {ta:.1f} | {tb:.1f} | {ta / tb:.2f}x | {wa:.2%} | "
              f"{wb:.2%} | {100 * (wb - wa):+.2f} | {same}/{len(refs)} |", flush=True)


if __name__ == "__main__":
    main()
