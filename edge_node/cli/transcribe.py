"""`edge-node` command line: argument parsing and output; the work is in transcribe.py."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge_node.engine.config import DEFAULT_MODEL_DIR, EdgeConfig
from shared.errors import UserError

log = logging.getLogger(__name__)


def add_transcribe_parser(sub: Any) -> None:
    p = sub.add_parser("transcribe", help="transcribe audio files with the edge model")
    p.add_argument("files", nargs="+", metavar="FILE", type=Path)
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="model artifact directory")
    p.add_argument("--json", action="store_true", help="one JSON object per file per line")
    p.add_argument("--beam", type=int, default=None, metavar="N", help="beam size (default: greedy)")
    p.add_argument("--threads", type=int, default=0, metavar="N", help="onnxruntime threads (0: automatic)")
    p.add_argument("--prompt", default=None, help="initial prompt: hot words or domain vocabulary")
    p.add_argument(
        "--timestamps", action="store_true", help="split windows into segments at timestamp tokens"
    )
    p.add_argument(
        "--full-context", action="store_true", help="always encode 30 s (no reduced audio context)"
    )
    p.set_defaults(func=cmd_transcribe)


def config_from_args(args: argparse.Namespace) -> EdgeConfig:
    if args.beam is not None and not 1 <= args.beam <= 16:
        raise UserError(f"--beam must be between 1 and 16, not {args.beam}")
    if args.threads < 0:
        raise UserError(f"--threads must be >= 0, not {args.threads}")
    cfg = EdgeConfig(
        model_dir=args.model_dir,
        threads=args.threads,
        beam_size=args.beam,
        initial_prompt=args.prompt,
        timestamps=args.timestamps,
    )
    if args.full_context:
        cfg = replace(cfg, audio_ctx=replace(cfg.audio_ctx, full=True))
    return cfg


def result_to_json(r: Any) -> dict[str, Any]:
    return {
        "file": r.file,
        "text": r.text,
        "language": r.language,
        "duration": r.duration,
        "segments": [
            {
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "avg_logprob": s.avg_logprob,
                "no_speech_prob": s.no_speech_prob,
                "compression_ratio": s.compression_ratio,
                "confidence": s.confidence,
                "escalate": s.escalate,
                "words": [
                    {"word": w.word, "start": w.start, "end": w.end, "probability": w.probability}
                    for w in s.words
                ],
            }
            for s in r.segments
        ],
        "timing": {"wall_s": r.wall_s},
    }


def run_transcribe(config: EdgeConfig, files: list[Path], as_json: bool) -> int:
    """Transcribe each file; a bad file gets one error line and a non-zero exit, the others still run."""
    from edge_node.engine.transcriber import EdgeTranscriber

    engine = EdgeTranscriber(config)  # a bad artifact is a UserError for the whole run
    failed = 0
    for path in files:
        try:
            result = engine.transcribe_file(path)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            failed += 1
            continue
        if as_json:
            print(json.dumps(result_to_json(result), ensure_ascii=False), flush=True)
        else:
            flags = " [escalate]" if any(s.escalate for s in result.segments) else ""
            print(f"{path}: {result.text}{flags}", flush=True)
    return 1 if failed else 0


def cmd_transcribe(args: argparse.Namespace) -> int:
    return run_transcribe(config_from_args(args), list(args.files), args.json)
