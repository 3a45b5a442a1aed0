"""Build the evaluation corpus from the Debian Asterisk packages.

    python -m bench.corpus build --out DIR [--per-condition N] [--per-language N] [--seed S] [--force]
    python -m bench.corpus summary DIR/manifest.jsonl

Every clip is written as 16 kHz mono PCM16 WAV, whatever its source rate, so every tool reads one format;
the 8 kHz and GSM conditions keep their narrow band (upsampled, nothing above 4 kHz). All English conditions
use the same prompts (a paired design: differences between conditions come from the degradation alone). Each
clip's random numbers come from its own generator seeded by (seed, clip id): no dependence on build order.
The build writes into a temporary sibling directory and renames it into place at the end; rerunning with the
same parameters finds the corpus up to date and does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation import asterisk, decode
from evaluation import degrade as dg
from evaluation.decode import SAMPLE_RATE
from evaluation.manifest import ManifestRow, condition_family, read_manifest, write_manifest
from shared.cli import run_cli, setup_logging
from shared.errors import UserError

log = logging.getLogger(__name__)

# Bump when the recipe changes, so an existing corpus is rebuilt rather than taken as up to date.
CORPUS_VERSION = 1
# Prompts shorter than this (in words) are mostly single digits and words: too short to score WER on.
MIN_WORDS = 4
WHITE_SNRS_DB = (20, 10, 5)
PINK_SNRS_DB = (20, 10, 5)
BABBLE_SNRS_DB = (10,)
# Babble talkers come from a fixed pool of English prompts not used as targets, decoded once.
BABBLE_POOL = 24
MUSIC_CLIP_S = 10.0
# sox reverb: reverberance %, HF damping %, room scale %, stereo depth %, pre-delay ms; -3 dB headroom first.
REVERB_EFFECT = ("gain", "-3", "reverb", "70", "50", "100", "100", "20")
NON_ENGLISH = ("es", "fr")
_NOTE = re.compile(r"\([^)]*\)")


@dataclass(frozen=True)
class BuildConfig:
    out: Path
    per_condition: int = 30
    per_language: int = 40
    seed: int = 7

    def params(self) -> dict[str, int]:
        return {
            "version": CORPUS_VERSION,
            "per_condition": self.per_condition,
            "per_language": self.per_language,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class ClipSpec:
    """One clip to render: `kind` names the recipe, the other fields feed it."""

    id: str
    condition: str
    kind: str  # clean-8k, g722, white, pink, gsm, reverb, babble, wav, music
    lang: str | None
    text: str | None
    source: str  # prompt id, or "track.wav@offset"
    path: str = ""  # source file for wav/music
    snr_db: float | None = None
    offset_s: float = 0.0


def _rng(seed: int, *key: str) -> np.random.Generator:
    digest = hashlib.sha256(":".join([str(seed), *key]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def reference_text(text: str, lang: str) -> str | None:
    """The transcript as a scoring reference, or None when the prompt is unusable as one.

    Drops the transcripts' parenthesised notes ("(simple tone sound plays)", "(3 seconds of silence)") and
    stray quotes; English keypad symbols become the words the voice says. Non-English prompts with symbols
    are skipped.
    """
    text = _NOTE.sub(" ", text).replace('"', " ")
    if lang == "en":
        text = text.replace("*", " star ").replace("#", " pound ")
    elif re.search(r"[*#]", text):
        return None
    text = " ".join(text.split())
    return text if len(re.findall(r"\w+", text)) >= MIN_WORDS else None


def speech_prompts(lang: str) -> list[asterisk.Prompt]:
    """Prompts usable as speech references, with their cleaned text, sorted by id."""
    out = []
    for p in asterisk.prompts(lang, min_words=MIN_WORDS):
        text = reference_text(p.text, lang)
        if text is not None:
            out.append(asterisk.Prompt(p.id, p.lang, text, p.wav))
    return out


def _pick(items: list, n: int, rng: np.random.Generator) -> list:
    order = rng.permutation(len(items))[: min(n, len(items))]
    return [items[i] for i in sorted(order)]


def plan(config: BuildConfig) -> list[ClipSpec]:
    """The clips to build, in manifest order. Reads only the prompt lists, never audio."""
    for lang in ("en", *NON_ENGLISH):
        if not asterisk.available(lang):
            package = f"asterisk-core-sounds-{lang}-wav"
            raise UserError(f"Asterisk {lang} prompts are not installed (apt-get install {package})")
    english = speech_prompts("en")
    targets = _pick(english, config.per_condition, _rng(config.seed, "en-targets"))
    specs: list[ClipSpec] = []

    def add(condition: str, kind: str, snr: float | None = None) -> None:
        for p in targets:
            specs.append(ClipSpec(f"{condition}/{p.id}", condition, kind, "en", p.text, p.id, snr_db=snr))

    add("en-clean-8k", "clean-8k")
    add("en-clean-g722", "g722")
    for snr in WHITE_SNRS_DB:
        add(f"en-white-{snr}db", "white", snr)
    for snr in PINK_SNRS_DB:
        add(f"en-pink-{snr}db", "pink", snr)
    add("en-gsm", "gsm")
    add("en-reverb", "reverb")
    for snr in BABBLE_SNRS_DB:
        add(f"en-babble-{snr}db", "babble", snr)
    for lang in NON_ENGLISH:
        chosen = _pick(speech_prompts(lang), config.per_language, _rng(config.seed, lang))
        cond = f"{lang}-clean"
        for p in chosen:
            specs.append(ClipSpec(f"{cond}/{p.id}", cond, "wav", lang, p.text, p.id, str(p.wav)))
    for track, offset in _music_windows(config.per_condition, _rng(config.seed, "music")):
        source = f"{track.name}@{offset:g}"
        spec = ClipSpec(f"music/{source}", "music", "music", None, "", source, str(track), offset_s=offset)
        specs.append(spec)
    return specs


def _music_windows(n: int, rng: np.random.Generator) -> list[tuple[Path, float]]:
    """`n` non-overlapping MUSIC_CLIP_S windows, spread over the tracks in turn, random within each track."""
    per_track = []
    for track in asterisk.music_files():
        count = int(decode.duration(track) // MUSIC_CLIP_S)
        per_track.append([(track, k * MUSIC_CLIP_S) for k in rng.permutation(count)])
    chosen: list[tuple[Path, float]] = []
    while len(chosen) < n and any(per_track):
        for windows in per_track:
            if windows and len(chosen) < n:
                chosen.append(windows.pop(0))
    return chosen


class Renderer:
    """Turns a ClipSpec into 16 kHz float32 audio; owns the babble talker pool."""

    def __init__(self, config: BuildConfig, specs: list[ClipSpec]) -> None:
        self.seed = config.seed
        used = {s.source for s in specs if s.lang == "en"}
        rest = [p.id for p in speech_prompts("en") if p.id not in used]
        if not rest:  # every prompt is a target: use them all (a clip's own prompt is still excluded)
            rest = sorted(used)
        self.pool = _pick(rest, BABBLE_POOL, _rng(config.seed, "babble-pool"))

    def __call__(self, spec: ClipSpec) -> np.ndarray:
        rng = _rng(self.seed, spec.id)
        kind = spec.kind
        if kind == "clean-8k":
            return decode.read_wav(str(asterisk.SOUNDS / asterisk.LANG_DIRS["en"] / f"{spec.source}.wav"))
        if kind == "g722":
            return decode.g722(spec.source)
        if kind == "gsm":
            return decode.gsm(spec.source)
        if kind == "reverb":
            return decode.sox_effect(decode.g722(spec.source), REVERB_EFFECT)
        if kind in ("white", "pink", "babble"):
            assert spec.snr_db is not None
            clean = decode.g722(spec.source)
            noise: np.ndarray
            if kind == "white":
                noise = dg.white_noise(clean.size, rng)
            elif kind == "pink":
                noise = dg.pink_noise(clean.size, rng)
            else:
                candidates = [p for p in self.pool if p != spec.source]
                talkers = _pick(candidates, dg.BABBLE_TALKERS, rng)
                noise = dg.babble(clean.size, [decode.g722(t) for t in talkers], rng)
            return dg.mix_at_snr(clean, noise, spec.snr_db)
        if kind == "wav":
            return decode.read_wav(spec.path)
        if kind == "music":
            return decode.read_wav(spec.path, spec.offset_s, MUSIC_CLIP_S)
        raise ValueError(f"unknown clip kind {kind!r}")


def _audio_name(spec: ClipSpec) -> str:
    safe = spec.source.replace("/", "_").replace("@", "_at_")
    return f"audio/{spec.condition}/{safe}.wav"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _plan_sha256(specs: list[ClipSpec]) -> str:
    return hashlib.sha256(json.dumps([list(vars(s).values()) for s in specs]).encode()).hexdigest()


def up_to_date(config: BuildConfig, specs: list[ClipSpec]) -> bool:
    stamp, manifest = config.out / "build.json", config.out / "manifest.jsonl"
    if not (stamp.is_file() and manifest.is_file()):
        return False
    try:
        meta = json.loads(stamp.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return bool(
        meta.get("params") == config.params()
        and meta.get("plan_sha256") == _plan_sha256(specs)
        and meta.get("manifest_sha256") == _sha256(manifest)
    )


def build(config: BuildConfig, progress: bool = True, force: bool = False) -> Path:
    """Build the corpus into `config.out`; returns the manifest path."""
    import soundfile as sf
    from tqdm import tqdm

    out = config.out
    if config.per_condition < 1 or config.per_language < 0:
        raise UserError("--per-condition must be >= 1 and --per-language >= 0")
    specs = plan(config)
    if not force and up_to_date(config, specs):
        log.info("corpus in %s is up to date", out)
        return out / "manifest.jsonl"
    if out.exists() and not (out / "build.json").is_file():
        raise UserError(f"{out} exists and is not a corpus built by evaluation.corpus; refusing to replace it")
    render = Renderer(config, specs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        rows: list[ManifestRow] = []
        for spec in tqdm(specs, desc="corpus", unit="clip", disable=not progress):
            audio = dg.to_pcm16(render(spec))
            name = _audio_name(spec)
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(tmp / name), audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
            extra: dict[str, object] = {"source": spec.source}
            if spec.snr_db is not None:
                extra["snr_db"] = spec.snr_db
            duration = round(audio.size / SAMPLE_RATE, 6)
            rows.append(ManifestRow(spec.id, name, spec.text, spec.lang, spec.condition, duration, extra))
        write_manifest(tmp / "manifest.jsonl", rows)
        meta = {
            "params": config.params(),
            "plan_sha256": _plan_sha256(specs),
            "clips": len(rows),
            "sample_rate": SAMPLE_RATE,
            "manifest_sha256": _sha256(tmp / "manifest.jsonl"),
            "conditions": sorted({r.condition for r in rows}),
        }
        (tmp / "build.json").write_text(json.dumps(meta, indent=2) + "\n")
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d clips to %s", len(rows), out)
    return out / "manifest.jsonl"


def _replace(new: Path, out: Path) -> None:
    """Move `new` into place at `out`; an old corpus there is moved aside first, then deleted."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / "corpus")
    os.rename(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def summary(manifest: Path) -> str:
    rows = read_manifest(manifest)
    by: dict[str, list[ManifestRow]] = {}
    for row in rows:
        by.setdefault(row.condition, []).append(row)
    lines = [f"{'condition':<18} {'family':<14} {'clips':>5} {'seconds':>8}"]
    for cond, group in by.items():
        seconds = sum(r.duration for r in group)
        lines.append(f"{cond:<18} {condition_family(cond):<14} {len(group):>5} {seconds:>8.1f}")
    lines.append(f"{'total':<18} {'':<14} {len(rows):>5} {sum(r.duration for r in rows):>8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.corpus", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the corpus")
    b.add_argument("--out", type=Path, required=True, help="corpus directory (manifest.jsonl, audio/)")
    b.add_argument(
        "--per-condition",
        type=int,
        default=BuildConfig.per_condition,
        help="clips per English condition and music clips (default %(default)s)",
    )
    b.add_argument(
        "--per-language",
        type=int,
        default=BuildConfig.per_language,
        help="Spanish and French clips each (default %(default)s)",
    )
    b.add_argument("--seed", type=int, default=BuildConfig.seed, help="base seed (default %(default)s)")
    b.add_argument("--force", action="store_true", help="rebuild even if up to date")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    s = sub.add_parser("summary", help="clips and seconds per condition and family")
    s.add_argument("manifest", type=Path)
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        if args.command == "build":
            config = BuildConfig(args.out, args.per_condition, args.per_language, args.seed)
            manifest = build(config, progress=not args.quiet, force=args.force)
            print(summary(manifest))
        else:
            print(summary(args.manifest))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
