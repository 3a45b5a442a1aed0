"""The corpus builder on a tiny corpus built from the installed Asterisk packages (prompts in three languages, music
on hold) with sox and ffmpeg: schema, determinism, SNR, durations. The builder's pure parts are in tests/unit."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from evaluation import asterisk
from evaluation.corpus import BuildConfig, Renderer, build, main, plan, reference_text, speech_prompts
from evaluation.degrade import measured_snr_db, to_pcm16
from evaluation.manifest import REQUIRED_KEYS, read_manifest
from shared.errors import UserError
from tests.prereq import require

PER_CONDITION = 2
PER_LANGUAGE = 2


def _need_sounds() -> None:
    for lang in ("en", "es", "fr"):
        require(asterisk.available(lang), f"Asterisk {lang} prompts are not installed")
    require(asterisk.music_files(), "Asterisk music on hold is not installed")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _need_sounds()
    out = tmp_path_factory.mktemp("corpus") / "c"
    return build(BuildConfig(out, PER_CONDITION, PER_LANGUAGE, seed=3), progress=False)


def _hashes(manifest: Path) -> dict[str, str]:
    rows = read_manifest(manifest)
    return {r.id: hashlib.sha256((manifest.parent / r.audio).read_bytes()).hexdigest() for r in rows}


def _load(manifest: Path, audio: str) -> np.ndarray:
    data, rate = sf.read(str(manifest.parent / audio), dtype="float64")
    assert rate == 16000
    return data


def test_manifest_schema_and_audio_format(corpus: Path) -> None:
    lines = corpus.read_text(encoding="utf-8").splitlines()
    rows = read_manifest(corpus)
    assert len(rows) == len(lines)
    for line in lines:
        assert set(REQUIRED_KEYS) <= set(json.loads(line))
    by_condition: dict[str, list] = {}
    for r in rows:
        by_condition.setdefault(r.condition, []).append(r)
        info = sf.info(str(corpus.parent / r.audio))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), r.id
        assert r.duration == pytest.approx(info.frames / 16000, abs=1e-6), r.id
        assert r.duration > 0.5
        if r.condition == "music":
            assert (r.text, r.lang) == ("", None)
            assert r.duration == pytest.approx(10.0)
        else:
            assert r.text and r.lang in ("en", "es", "fr")
            assert "(" not in r.text and "*" not in r.text
    english = [c for c in by_condition if c.startswith("en-")]
    assert {"en-clean-8k", "en-clean-g722", "en-gsm", "en-reverb"} <= set(english)
    assert any("white" in c for c in english) and any("pink" in c for c in english)
    assert any("babble" in c for c in english)
    assert len(by_condition["es-clean"]) == len(by_condition["fr-clean"]) == PER_LANGUAGE
    assert len(by_condition["music"]) == PER_CONDITION
    # Paired design: every English condition holds the same prompts.
    sources = {c: sorted(r.extra["source"] for r in by_condition[c]) for c in english}
    assert len({tuple(s) for s in sources.values()}) == 1
    assert all(len(by_condition[c]) == PER_CONDITION for c in english)


def test_noisy_clips_have_the_target_snr(corpus: Path) -> None:
    rows = read_manifest(corpus)
    clean = {r.extra["source"]: _load(corpus, r.audio) for r in rows if r.condition == "en-clean-g722"}
    noisy = [r for r in rows if "snr_db" in r.extra]
    assert len(noisy) >= 7 * PER_CONDITION
    for r in noisy:
        measured = measured_snr_db(clean[r.extra["source"]], _load(corpus, r.audio))
        assert measured == pytest.approx(r.extra["snr_db"], abs=0.5), (r.id, measured)


def _band_share_above(x: np.ndarray, hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(x.size, 1 / 16000)
    return float(spectrum[freqs > hz].sum() / spectrum.sum())


def test_narrowband_conditions_stay_narrowband(corpus: Path) -> None:
    rows = {(r.condition, r.extra["source"]): r for r in read_manifest(corpus)}
    source = next(s for c, s in rows if c == "en-clean-g722")
    wide = _band_share_above(_load(corpus, rows["en-clean-g722", source].audio), 4200)
    for cond in ("en-clean-8k", "en-gsm"):
        narrow = _band_share_above(_load(corpus, rows[cond, source].audio), 4200)
        assert narrow < 1e-4 < wide, (cond, narrow, wide)


def test_two_builds_are_identical_and_a_rebuild_is_skipped(corpus: Path, tmp_path: Path) -> None:
    again = build(BuildConfig(tmp_path / "c", PER_CONDITION, PER_LANGUAGE, seed=3), progress=False)
    assert again.read_bytes() == corpus.read_bytes()
    assert _hashes(again) == _hashes(corpus)
    before = again.stat().st_mtime_ns
    assert build(BuildConfig(tmp_path / "c", PER_CONDITION, PER_LANGUAGE, seed=3), progress=False) == again
    assert again.stat().st_mtime_ns == before  # up to date: nothing rewritten
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directories left


def test_the_seed_sets_the_noise(corpus: Path, tmp_path: Path) -> None:
    specs = [s for s in plan(BuildConfig(tmp_path, PER_CONDITION, PER_LANGUAGE, seed=3)) if s.kind == "white"]
    spec = specs[0]
    render = {
        seed: Renderer(BuildConfig(tmp_path, PER_CONDITION, PER_LANGUAGE, seed), specs) for seed in (3, 4)
    }
    built = dict((r.id, r) for r in read_manifest(corpus))[spec.id]
    same = render[3](spec)
    assert np.array_equal(to_pcm16(same), (_load(corpus, built.audio) * 32768).astype(np.int16))
    assert not np.array_equal(same, render[4](spec))


def test_refuses_to_replace_a_directory_it_did_not_build(tmp_path: Path) -> None:
    _need_sounds()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a corpus"):
        build(BuildConfig(tmp_path / "c", 1, 1), progress=False)
    assert (tmp_path / "c" / "precious.txt").read_text() == "keep me"


def test_cli_finds_the_corpus_up_to_date_and_summarises_it(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = corpus.stat().st_mtime_ns
    argv = ["build", "--out", str(corpus.parent), "--per-condition", str(PER_CONDITION),
            "--per-language", str(PER_LANGUAGE), "--seed", "3", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert corpus.stat().st_mtime_ns == before  # same parameters: nothing rebuilt
    built = capsys.readouterr().out
    assert main(["summary", str(corpus)]) == 0
    assert capsys.readouterr().out == built  # build prints the same summary
    lines = {line.split()[0]: line.split() for line in built.splitlines()[1:]}
    rows = read_manifest(corpus)
    assert lines["total"][1] == str(len(rows))
    assert lines["es-clean"][1:3] == ["es-clean", str(PER_LANGUAGE)]
    assert lines["music"][2] == str(PER_CONDITION)


def test_installed_speech_prompts_have_no_silence_prompts() -> None:
    _need_sounds()
    prompts = speech_prompts("en")
    assert prompts and not [p for p in prompts if p.id.startswith("silence/")]
    assert all(reference_text(p.text, "en") == p.text for p in prompts)  # already cleaned


@pytest.mark.slow
def test_tiny_en_transcribes_clean_corpus_clips(corpus: Path, tiny_checkpoint: Path) -> None:
    from evaluation.baseline import whisper_transcriber
    from evaluation.scoring import evaluate

    transcribe = whisper_transcriber(tiny_checkpoint, language=None, threads=2)
    point, scores = evaluate(corpus, transcribe, mode="edge", conditions=["en-clean-g722"], progress=False)
    assert point.clips == PER_CONDITION
    assert point.wer is not None and point.wer <= 0.2, [(s.row.text, s.hyp.text) for s in scores]
    assert point.escalated_seconds_fraction == 0.0
