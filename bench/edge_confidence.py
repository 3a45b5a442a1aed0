"""Confidence calibration data: segment features and verdicts of the edge engine on Asterisk en/es/fr prompts
and music on hold.

    python -m bench.edge_confidence [--n 80] [--json OUT]
    python -m bench.edge_confidence --fit OUT   # refit the weights on a saved run, two-fold by prompt id

Prints, per language, the share of prompts with at least one escalated segment (goals: es/fr >= 95 %,
en <= 10 %) and, for music, how many words were emitted (goal: 0).
"""

from __future__ import annotations

import argparse
import json
import random
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edge_node.engine.config import EdgeConfig
from edge_node.engine.transcriber import EdgeTranscriber
from evaluation import asterisk


def _features(rows: list[dict[str, Any]]) -> np.ndarray:
    return np.array(
        [[r["avg_logprob"], np.log(max(r["min_token_prob"], 1e-9)), r["mean_entropy"]] for r in rows]
    )


def _fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 20000) -> tuple[np.ndarray, float]:
    """Class-balanced L2 logistic regression by gradient descent on standardised features."""
    mu, sd = x.mean(0), x.std(0)
    z = (x - mu) / sd
    w, b = np.zeros(z.shape[1]), 0.0
    cw = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    for _ in range(steps):
        g = (1 / (1 + np.exp(-(z @ w + b))) - y) * cw
        w -= 0.1 * (z.T @ g / len(y) + l2 * w)
        b -= 0.1 * float(g.mean())
    return w / sd, float(b - (w / sd) @ mu)


def fit_report(path: Path, threshold: float) -> None:
    rows = json.loads(path.read_text())["segments"]
    x, y = _features(rows), np.array([r["lang"] == "en" for r in rows], float)
    fold = np.array([zlib.crc32(r["id"].encode()) % 2 for r in rows])
    for k in (0, 1):
        w, b = _fit(x[fold == k], y[fold == k])
        test = fold != k
        esc = 1 / (1 + np.exp(-(x[test] @ w + b))) < threshold
        print(
            f"fold {k}: w={w.round(2)} b={b:.2f}  held-out: en flagged {esc[y[test] == 1].mean():.1%}, "
            f"es/fr flagged {esc[y[test] == 0].mean():.1%}"
        )
    w, b = _fit(x, y)
    print(f"all data: bias={b:.2f} w_logprob={w[0]:.2f} w_log_min_prob={w[1]:.2f} w_entropy={w[2]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60, help="prompts per language (random sample, seed 0)")
    ap.add_argument("--model-dir", type=Path, default=EdgeConfig().model_dir)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--music-s", type=float, default=60.0, help="seconds of each music file to use")
    ap.add_argument("--min-words", type=int, default=4, help="prompts with at least this many words")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--fit", type=Path, default=None, help="fit the weights on a saved --json run and exit")
    args = ap.parse_args()
    if args.fit:
        fit_report(args.fit, EdgeConfig().confidence.escalate_below)
        return
    engine = EdgeTranscriber(EdgeConfig(model_dir=args.model_dir, threads=args.threads))
    rows = []
    summary: dict[str, Any] = {}
    for lang in ("en", "es", "fr"):
        ps = asterisk.prompts(lang, min_words=args.min_words)
        ps = [p for p in ps if not p.text.startswith("(")]  # "(5 seconds of silence)" is no speech
        random.Random(0).shuffle(ps)
        flagged = 0
        for p in ps[: args.n]:
            r = engine.transcribe_file(p.wav)
            esc = any(s.escalate for s in r.segments)  # no segment at all: nothing to escalate
            flagged += esc
            for s in r.segments:
                d = asdict(s)
                d.pop("words")
                rows.append({"lang": lang, "id": p.id, "ref": p.text, **d})
        n = min(args.n, len(ps))
        summary[lang] = {"prompts": n, "escalated": flagged, "rate": round(flagged / max(n, 1), 3)}
        print(f"{lang}: {flagged}/{n} prompts escalated ({flagged / max(n, 1):.1%})", flush=True)
    from shared import audio, audio_files

    words = 0
    for f in asterisk.music_files():
        samples = audio_files.load_audio(f)[: int(args.music_s * audio.SAMPLE_RATE)]
        r = engine.transcribe(samples)
        n_words = sum(len(s.words) for s in r.segments)
        words += n_words
        print(f"music {f.name}: {len(r.segments)} segments, {n_words} words {r.text[:60]!r}", flush=True)
    summary["music_words"] = words
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "segments": rows}, indent=1))


if __name__ == "__main__":
    main()
