"""Score an openai-whisper checkpoint alone over a corpus manifest: the edge-only or cloud-only reference.

    python -m bench.baseline --manifest M --model models/tiny.en.pt --mode edge [--json OUT]

Greedy decoding (temperature 0, no fallback), each clip decoded on its own. A multilingual model detects the
language unless --language is given; an English-only model is told "en".
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from evaluation.report import format_table, row_json
from evaluation.scoring import evaluate
from shared.audio_files import load_audio
from shared.cli import run_cli, setup_logging
from shared.errors import UserError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000


def whisper_transcriber(
    checkpoint: Path, language: str | None, threads: int
) -> Callable[[Path], dict[str, Any]]:
    import torch

    from cloud_service.asr.checkpoint import load_whisper

    torch.set_num_threads(threads)
    model = load_whisper(checkpoint)
    if not model.is_multilingual:
        language = "en"

    def transcribe(path: Path) -> dict[str, Any]:
        audio = load_audio(path)  # UserError naming the file when it is unreadable
        result: Mapping[str, Any] = model.transcribe(
            audio, language=language, temperature=0.0, fp16=False, condition_on_previous_text=False
        )
        return {
            "text": result["text"],
            "language": result.get("language"),
            "segments": len(result["segments"]) or 1,
        }

    return transcribe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True, help="openai-whisper checkpoint (.pt)")
    parser.add_argument(
        "--mode",
        choices=("edge", "cloud"),
        default="edge",
        help="edge: nothing escalated; cloud: all audio counted as sent to the cloud",
    )
    parser.add_argument("--language", default=None, help="force a language (default: detect if multilingual)")
    parser.add_argument(
        "--per-condition", type=int, default=None, help="only the first N clips per condition"
    )
    parser.add_argument("--condition", action="append", default=None, help="only this condition (repeatable)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write the operating point here")
    parser.add_argument("--rows", type=Path, default=None, help="write one JSON line per scored clip here")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        if not args.model.is_file():
            raise UserError(f"checkpoint not found: {args.model}")
        transcribe = whisper_transcriber(args.model, args.language, args.threads)
        point, scores = evaluate(
            args.manifest,
            transcribe,
            mode=args.mode,
            per_condition=args.per_condition,
            conditions=args.condition,
        )
        print(format_table({args.model.stem: point}))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(point.to_json(), indent=2) + "\n")
        if args.rows:
            args.rows.parent.mkdir(parents=True, exist_ok=True)
            args.rows.write_text("".join(json.dumps(row_json(s), ensure_ascii=False) + "\n" for s in scores))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
