"""Hot-word biasing on real speech: phrase recall, distractor insertions and WER on the other words, with and
without biasing, for the edge (tiny.en int8 ONNX) and optionally the cloud (openai-whisper base, beam 5).

    python -m bench.hotwords [--n 100] [--threads 2] [--cloud models/base.pt] [--json OUT]

The set (docs/hotwords.md has the rules in prose): real Asterisk prompt recordings (8 kHz, US English, one speaker)
with their published transcripts as references.
- Controls: the first `--n` prompts of >= 4 words (the set bench.edge_accuracy uses).
- Names (products, people, features): every maximal run of capitalised words inside a sentence of any prompt's
  reference (not its first word; single letters are spelled letters, not names), e.g. "Digium", "Super Awesome
  Company", "Comedian Mail". Every prompt whose reference holds one joins the set.
- Misrecognised rare words: words of >= 4 letters of the controls' references that occur in at most 3 prompts of
  the whole corpus and that the unbiased edge decode of that prompt lacks, names left out (the words an operator
  would add after seeing the device get them wrong; they count wherever they occur, so their unbiased recall is
  low, not 0).
- Distractors: phrases of the same kinds that occur in no reference of the corpus (checked); a hypothesis holding
  one is a false insertion.
Every utterance is decoded with one list (all names, rare words and distractors), as an operator pushes one list
to a fleet. Text is scored after openai-whisper's EnglishTextNormalizer; a phrase is recalled when its normalised
words occur contiguously in the hypothesis. "other-word WER" counts errors on reference words outside hot-word
occurrences (insertions count there too), over those words; "hot-word WER" the errors on the phrase words.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge_node.engine.config import EdgeConfig
from edge_node.engine.transcriber import EdgeTranscriber
from evaluation import asterisk
from shared import audio_files
from shared.hotwords import check_hotwords

DISTRACTORS = (
    "turn on the kitchen lights",  # command phrases
    "set the thermostat",
    "Home Assistant",  # products
    "Philips Hue",
    "Raspberry Pi",
    "Zigbee",
    "Sarah Connor",  # people
    "Jean-Luc Picard",
    "Nakamura",
    "Oksana",
)
_SENTENCES = re.compile(r"(?<=[.!?])\s+|[,;:\"()]")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


@dataclass
class Utterance:
    id: str
    reference: str
    samples: Any
    phrases: list[str] = field(default_factory=list)  # target phrases its reference holds


def name_phrases(text: str) -> list[str]:
    """Maximal runs of capitalised words (2+ letters) after the first word of each sentence or clause."""
    out: list[str] = []
    for sentence in _SENTENCES.split(text):
        words, run = _WORD.findall(sentence), []
        for w in [*words[1:], ""]:
            if w and w[0].isupper() and len(w) > 1:
                run.append(w)
            elif run:
                out.append(" ".join(run))
                run = []
    return out


def normalizer() -> Callable[[str], list[str]]:
    from whisper.normalizers import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    return lambda text: norm(text).split()


def find(words: Sequence[str], phrase: Sequence[str]) -> list[int]:
    """Start indices of `phrase` in `words`."""
    n = len(phrase)
    return [i for i in range(len(words) - n + 1) if n and list(words[i : i + n]) == list(phrase)]


def build_set(n: int) -> tuple[list[Utterance], list[str]]:
    """(utterances, name phrases): the controls and every prompt that holds a name."""
    corpus = asterisk.prompts("en")
    controls = {p.id for p in asterisk.prompts("en", min_words=4)[:n]}
    names: list[str] = []
    chosen = []
    for p in corpus:
        found = name_phrases(p.text)
        names.extend(x for x in found if x not in names)
        if found or p.id in controls:
            chosen.append(p)
    utts = [Utterance(p.id, p.text, audio_files.load_audio(p.wav)) for p in chosen]
    return utts, names


def rare_misses(utts: list[Utterance], hyps: list[str], norm: Callable[[str], list[str]], n: int) -> list[str]:
    """Rare words (>= 4 letters, in <= 3 prompts of the corpus) of the controls that the unbiased decode lacks."""
    df: Counter[str] = Counter()
    for p in asterisk.prompts("en"):
        df.update(set(norm(p.text)))
    controls = {p.id for p in asterisk.prompts("en", min_words=4)[:n]}
    out: list[str] = []
    for u, h in zip(utts, hyps, strict=True):
        if u.id not in controls:
            continue
        said = set(norm(h))
        for w in norm(u.reference):
            if len(w) >= 4 and w.isalpha() and df[w] <= 3 and w not in said and w not in out:
                out.append(w)
    return out


def mark_targets(utts: list[Utterance], targets: list[str], norm: Callable[[str], list[str]]) -> None:
    for u in utts:
        ref = norm(u.reference)
        u.phrases = [t for t in targets if find(ref, norm(t))]


def check_distractors(norm: Callable[[str], list[str]]) -> None:
    refs = [norm(p.text) for p in asterisk.prompts("en")]
    for d in DISTRACTORS:
        if any(find(r, norm(d)) for r in refs):
            raise SystemExit(f"distractor {d!r} occurs in a reference: pick another")


def recall(utts: list[Utterance], hyps: list[str], norm: Callable[[str], list[str]], only: set[str]) -> float:
    hits = [bool(find(norm(h), norm(t))) for u, h in zip(utts, hyps, strict=True) for t in u.phrases if t in only]
    return sum(hits) / len(hits) if hits else 0.0


def score(utts: list[Utterance], hyps: list[str], norm: Callable[[str], list[str]]) -> dict[str, float]:
    """Recall of target phrases, distractor insertions, other-word and hot-word WER (see the module doc)."""
    import jiwer

    hit = total = inserted = 0
    err_other = n_other = err_hot = n_hot = 0
    for u, h in zip(utts, hyps, strict=True):
        ref, hyp = norm(u.reference), norm(h)
        hot: set[int] = set()
        for t in u.phrases:
            tw = norm(t)
            total += 1
            hit += bool(find(hyp, tw))
            for i in find(ref, tw):
                hot.update(range(i, i + len(tw)))
        inserted += sum(bool(find(hyp, norm(d))) for d in DISTRACTORS)
        n_hot += len(hot)
        n_other += len(ref) - len(hot)
        if not ref:
            continue
        out = jiwer.process_words(" ".join(ref), " ".join(hyp) or "<empty>")
        for c in out.alignments[0]:
            if c.type == "insert":
                err_other += c.hyp_end_idx - c.hyp_start_idx
            elif c.type != "equal":
                for i in range(c.ref_start_idx, c.ref_end_idx):
                    if i in hot:
                        err_hot += 1
                    else:
                        err_other += 1
    return {
        "phrases": total,
        "recall": hit / total if total else 0.0,
        "distractor_insertions": inserted,
        "other_wer": err_other / max(n_other, 1),
        "hotword_wer": err_hot / max(n_hot, 1),
    }


def run_edge(utts: list[Utterance], cfg: EdgeConfig, hotwords: tuple[str, ...], desc: str) -> list[str]:
    from tqdm import tqdm

    engine = EdgeTranscriber(cfg)
    return [engine.transcribe(u.samples, hotwords=hotwords).text
            for u in tqdm(utts, desc=desc, unit="clip")]


def run_cloud(utts: list[Utterance], checkpoint: Path, threads: int, hotwords: tuple[str, ...],
              desc: str) -> list[str]:
    import torch
    from tqdm import tqdm

    from cloud_service.asr.model import AsrModel, AsrRequest

    torch.set_num_threads(threads)
    model = AsrModel.load(checkpoint, "cpu")
    out: list[str] = []
    batch = 8
    for b in tqdm(range(0, len(utts), batch), desc=desc, unit="batch"):
        reqs = [AsrRequest(u.samples, "en", hotwords=hotwords) for u in utts[b : b + batch]]
        out.extend(r.text for r in model.transcribe_batch(reqs))
    return out


def table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| system | biasing | phrases | phrase recall | names | rare words | distractor insertions | "
             "other-word WER | hot-word WER |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        system, _, mode = name.rpartition(" ")
        lines.append(f"| {system} | {mode} | {r['phrases']:.0f} | {r['recall']:.1%} | {r['names']:.1%} | "
                     f"{r['rare']:.1%} | "
                     f"{r['distractor_insertions']:.0f} | {r['other_wer']:.2%} | {r['hotword_wer']:.2%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100, help="control prompts (>= 4 words)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model-dir", type=Path, default=EdgeConfig().model_dir)
    ap.add_argument("--cloud", type=Path, default=None,
                    help="also the cloud model (e.g. models/base.pt), on the clips of <= 30 s holding a target phrase")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    norm = normalizer()
    check_distractors(norm)
    utts, names = build_set(args.n)
    cfg = replace(EdgeConfig(model_dir=args.model_dir, threads=args.threads), word_timestamps=False)
    plain = run_edge(utts, cfg, (), "edge unbiased")
    lower = {x.lower() for x in names}
    rare = [w for w in rare_misses(utts, plain, norm, args.n) if w not in lower]  # not a name again
    hotwords = check_hotwords([*names, *rare, *DISTRACTORS])
    mark_targets(utts, [*names, *rare], norm)
    biased = run_edge(utts, cfg, hotwords, "edge biased")
    def scored(us: list[Utterance], hyps: list[str]) -> dict[str, float]:
        return {**score(us, hyps, norm), "names": recall(us, hyps, norm, set(names)),
                "rare": recall(us, hyps, norm, set(rare) - set(names))}

    rows = {"edge tiny.en int8 off": scored(utts, plain), "edge tiny.en int8 on": scored(utts, biased)}
    if args.cloud:
        sub = [u for u in utts if u.phrases and len(u.samples) <= 30 * 16_000]  # one window each
        name = f"cloud {args.cloud.stem} beam 5 (phrase clips <= 30 s)"
        rows[f"{name} off"] = scored(sub, run_cloud(sub, args.cloud, args.threads, (), "cloud unbiased"))
        rows[f"{name} on"] = scored(sub, run_cloud(sub, args.cloud, args.threads, hotwords, "cloud biased"))
    n_phr = sum(bool(u.phrases) for u in utts)
    print(f"\n{len(utts)} utterances ({n_phr} with a target phrase), {len(names)} names, {len(rare)} rare "
          f"misrecognised words, {len(DISTRACTORS)} distractors; {len(hotwords)} hot-words in one list")
    print(f"names: {', '.join(names)}\nrare words: {', '.join(rare)}\n")
    print(table(rows))
    print(f"\nwall {time.perf_counter() - t0:.0f} s")
    changed = [(u.id, a, b) for u, a, b in zip(utts, plain, biased, strict=True) if a != b]
    for uid, a, b in changed[:20]:
        print(f"  {uid}: {a!r} -> {b!r}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "names": names, "rare": rare, "changed": changed}, indent=1))


if __name__ == "__main__":
    main()
