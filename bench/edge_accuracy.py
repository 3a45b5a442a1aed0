"""Edge engine (int8 ONNX) vs openai-whisper fp32 tiny.en on English Asterisk prompts: exact text match and WER.

    python -m bench.edge_accuracy [--n 100] [--threads N] [--json OUT]

Both engines get the same 16 kHz samples (shared.audio.load_audio) and decode greedily without timestamps and
without temperature fallback. The edge runs its real pipeline (VAD, windows, reduced audio context with its 30 s
rescue) and, for comparison, with a full 30 s context. WER: openai-whisper's EnglishTextNormalizer on both sides,
jiwer, corpus level. Goals: exact match >= 90 %, WER within 0.3 points of openai-whisper's.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from bench import asterisk
from edge_node.config import EdgeConfig
from edge_node.transcribe import EdgeTranscriber
from shared import audio


def reference_texts(samples: list, checkpoint: Path, threads: int) -> list[str]:
    import torch
    import whisper

    if threads:
        torch.set_num_threads(threads)
    model = whisper.load_model(str(checkpoint), device="cpu")
    opts = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False, temperature=0.0)
    out = []
    for x in samples:
        mel = whisper.log_mel_spectrogram(torch.from_numpy(x), padding=audio.N_SAMPLES)[:, : audio.N_FRAMES]
        out.append(whisper.decode(model, mel, opts).text.strip())
    return out


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
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    prompts = asterisk.prompts("en", min_words=4)[: args.n]
    samples = [audio.load_audio(p.wav) for p in prompts]
    truth = [p.text for p in prompts]
    t0 = time.perf_counter()
    ref = reference_texts(samples, args.checkpoint, args.threads)
    report: dict = {"n": len(prompts), "openai_whisper_fp32": {"wer": wer(truth, ref), "s": time.perf_counter() - t0}}
    base = EdgeConfig(model_dir=args.model_dir, threads=args.threads, temperatures=(0.0,), word_timestamps=False)
    variants = {"edge_int8": base, "edge_int8_full_context": replace(base, audio_ctx=replace(base.audio_ctx, full=True))}
    mismatches = {}
    for name, cfg in variants.items():
        engine = EdgeTranscriber(cfg)
        t0 = time.perf_counter()
        hyp = [engine.transcribe(x).text for x in samples]
        same = sum(h == r for h, r in zip(hyp, ref, strict=True))
        report[name] = {"exact_match": same / len(ref), "wer": wer(truth, hyp), "s": time.perf_counter() - t0}
        mismatches[name] = [(p.id, r, h) for p, r, h in zip(prompts, ref, hyp, strict=True) if h != r]
        print(f"{name}: exact match {same}/{len(ref)}, WER {report[name]['wer']:.2%} "
              f"(openai-whisper fp32 {report['openai_whisper_fp32']['wer']:.2%})", flush=True)
    for pid, r, h in mismatches["edge_int8"][:15]:
        print(f"  {pid}: whisper={r!r} edge={h!r}")
    if args.json:
        args.json.write_text(json.dumps({**report, "mismatches": mismatches}, indent=1))


if __name__ == "__main__":
    main()
