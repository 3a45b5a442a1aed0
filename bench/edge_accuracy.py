"""Edge engine (int8 ONNX) vs openai-whisper fp32 tiny.en on English Asterisk prompts: exact text match and
WER.

    python -m bench.edge_accuracy [--n 100] [--threads N] [--json OUT]

Both engines get the same 16 kHz samples (shared.audio_files.load_audio) and decode greedily without timestamps and
without temperature fallback. The edge runs its real pipeline (VAD, windows, reduced audio context with its 30
s rescue) and, for comparison, with a full 30 s context. WER: openai-whisper's EnglishTextNormalizer on both
sides, jiwer, corpus level. Goals: exact match >= 90 %, WER within 0.3 points of openai-whisper's.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from edge_node.engine.config import EdgeConfig
from edge_node.engine.transcriber import EdgeTranscriber
from evaluation import asterisk
from shared import audio_files

CACHE = Path("bench/out/edge_accuracy_reference.json")
# Reduced-audio-context policies compared (AudioContextPolicy fields); "full" is Whisper's 30 s.
VARIANTS: dict[str, dict] = {
    "default": {},
    "full": {"full": True},
    "min10": {"min_frames": 1000, "margin_frames": 500},
    "no_rescue": {"rescue_logprob": -99.0, "rescue_compression_ratio": 99.0},
}


def reference_texts(ids: list[str], samples: list, checkpoint: Path, threads: int) -> list[str]:
    """openai-whisper fp32 greedy, no fallback, no timestamps (transcribe(): clips over 30 s too); cached."""
    cache = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    if all(i in cache for i in ids):
        return [cache[i] for i in ids]
    import torch
    import whisper

    if threads:
        torch.set_num_threads(threads)
    model = whisper.load_model(str(checkpoint), device="cpu")
    for i, x in zip(ids, samples, strict=True):
        if i not in cache:
            r = model.transcribe(
                x,
                language="en",
                temperature=0.0,
                fp16=False,
                without_timestamps=True,
                condition_on_previous_text=False,
            )
            cache[i] = str(r["text"]).strip()
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    CACHE.write_text(json.dumps(cache, indent=1))
    return [cache[i] for i in ids]


def wer(refs: list[str], hyps: list[str]) -> float:
    import jiwer
    from whisper.normalizers import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    pairs = [(norm(r), norm(h)) for r, h in zip(refs, hyps, strict=True)]
    pairs = [(r, h) for r, h in pairs if r.strip()]
    return float(jiwer.wer([r for r, _ in pairs], [h if h.strip() else "<empty>" for _, h in pairs]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model-dir", type=Path, default=EdgeConfig().model_dir)
    ap.add_argument("--checkpoint", type=Path, default=Path("models/tiny.en.pt"))
    ap.add_argument("--variants", default="default,full", help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    prompts = asterisk.prompts("en", min_words=4)[: args.n]
    samples = [audio_files.load_audio(p.wav) for p in prompts]
    truth = [p.text for p in prompts]
    t0 = time.perf_counter()
    ref = reference_texts([p.id for p in prompts], samples, args.checkpoint, args.threads)
    report: dict = {
        "n": len(prompts),
        "openai_whisper_fp32": {"wer": wer(truth, ref), "s": time.perf_counter() - t0},
    }
    base = EdgeConfig(
        model_dir=args.model_dir, threads=args.threads, temperatures=(0.0,), word_timestamps=False
    )
    variants = {
        f"edge_int8_{v}": replace(base, audio_ctx=replace(base.audio_ctx, **VARIANTS[v]))
        for v in args.variants.split(",")
    }
    mismatches = {}
    for name, cfg in variants.items():
        engine = EdgeTranscriber(cfg)
        engine.transcribe(samples[0])  # warm-up
        t0 = time.perf_counter()
        hyp = [engine.transcribe(x).text for x in samples]
        same = sum(h == r for h, r in zip(hyp, ref, strict=True))
        report[name] = {"exact_match": same / len(ref), "wer": wer(truth, hyp), "s": time.perf_counter() - t0}
        mismatches[name] = [(p.id, r, h) for p, r, h in zip(prompts, ref, hyp, strict=True) if h != r]
        print(
            f"{name}: exact match {same}/{len(ref)}, WER {report[name]['wer']:.2%} "
            f"(openai-whisper fp32 {report['openai_whisper_fp32']['wer']:.2%})",
            flush=True,
        )
    for pid, r, h in next(iter(mismatches.values()))[:15]:
        print(f"  {pid}: whisper={r!r} edge={h!r}")
    if args.json:
        args.json.write_text(json.dumps({**report, "mismatches": mismatches}, indent=1))


if __name__ == "__main__":
    main()
