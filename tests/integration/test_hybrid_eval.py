"""The hybrid harness end to end on three clips (English, Spanish, music): the int8 edge, a real Redis, a real
`cloud-service serve` subprocess with base on a free port, escalations over gRPC as FLAC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_node.core.confidence import ConfidenceConfig
from edge_node.core.escalation_policy import EscalationPolicy
from evaluation import asterisk, hybrid_policy
from evaluation.hybrid_eval import HybridEvalConfig, run
from tests.prereq import require

ISSUE_KEYS = {
    "threshold",
    "wer",
    "wer_by_condition",
    "escalated_seconds_fraction",
    "bytes_per_escalated_second",
    "non_english_escalated",
    "no_speech_words",
}


def _manifest(tmp: Path) -> Path:
    from shared.audio_files import load_audio

    for code in ("en", "es"):
        require(asterisk.available(code), f"Asterisk {code} prompts are not installed")
    music = asterisk.music_files()
    require(music, "Asterisk music on hold is not installed")
    en = next(p for p in asterisk.prompts("en", min_words=4) if p.id == "conf-nonextended")
    es = next(p for p in asterisk.prompts("es", min_words=4) if p.id == "conf-getpin")
    rows = []
    clips: list[tuple[str, str | None, str, np.ndarray]] = [
        ("en-clean", "en", en.text, load_audio(en.wav)),
        ("es-clean", "es", es.text, load_audio(es.wav)),
        ("music", None, "", load_audio(music[0])[16000 * 20 : 16000 * 28]),
    ]
    for cond, lang, text, samples in clips:
        name = f"{cond}.wav"
        sf.write(tmp / name, np.asarray(samples, dtype=np.float32), 16000, subtype="PCM_16")
        rows.append({"id": f"{cond}/0", "audio": name, "text": text, "lang": lang, "condition": cond,
                     "duration": len(samples) / 16000})  # fmt: skip
    path = tmp / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
@pytest.mark.redis
def test_hybrid_eval_end_to_end(tmp_path: Path, edge_artifact: Path, base_checkpoint: Path) -> None:
    manifest = _manifest(tmp_path)
    rows_out = tmp_path / "out" / "rows.jsonl"
    cfg = HybridEvalConfig(
        manifest=manifest,
        json_out=tmp_path / "out" / "hybrid.json",
        rows_out=rows_out,
        thresholds=(0.0, 1.01),
        model_dir=edge_artifact,
        cloud_model=base_checkpoint,
    )
    doc = run(cfg)
    assert json.loads(cfg.json_out.read_text()) == json.loads(json.dumps(doc))
    default = ConfidenceConfig().escalate_below
    for key in ("edge", "cloud", "chosen"):
        assert set(doc[key]) >= ISSUE_KEYS
    assert doc["edge"]["threshold"] is None and doc["cloud"]["threshold"] is None
    assert [p["threshold"] for p in doc["hybrid"]] == sorted({0.0, default, 1.01})
    assert doc["chosen"]["threshold"] == default
    assert doc["setup"]["shipped_flag_mismatches"] == 0
    assert doc["setup"]["detect_language_below"] == EscalationPolicy().detect_language_below
    # Cloud-only sends everything; edge-only nothing.
    assert doc["cloud"]["escalated_seconds_fraction"] == pytest.approx(1.0)
    assert doc["edge"]["escalated_seconds_fraction"] == 0.0 and doc["edge"]["bytes_per_escalated_second"] is None
    top = doc["hybrid"][-1]
    assert top["escalated_segments_fraction"] == 1.0  # every speech segment went to the cloud at 1.01
    assert top["bytes_per_escalated_second"] > 0
    # Music: the edge's VAD and no-speech guard emit nothing, so nothing to escalate and no words.
    assert doc["chosen"]["no_speech_words"] == 0
    rows = {r["id"]: r for r in map(json.loads, rows_out.read_text().splitlines())}
    assert rows["music/0"]["edge"] == [] and rows["music/0"]["cloud_segments"] == {}
    en, es = rows["en-clean/0"], rows["es-clean/0"]
    # Every speech segment got the cloud's text (one call each, reused across thresholds).
    for r in (en, es):
        assert r["edge"] and set(r["cloud_segments"]) == {str(i) for i in range(len(r["edge"]))}
        assert all(t.strip() for t in r["cloud_segments"].values())
    assert "conference" in en["cloud_segments"]["0"].lower()
    # The Spanish clip is unsure on the edge: it escalates at the default, as "detect", and comes back Spanish.
    assert all(s["escalate"] for s in es["edge"])
    assert all(s["confidence"] < EscalationPolicy().detect_language_below for s in es["edge"])
    assert set(es["cloud_languages"].values()) == {"es"}
    assert es["hybrid_default"] == " ".join(es["cloud_segments"][str(i)] for i in range(len(es["edge"])))
    assert doc["chosen"]["non_english_escalated"] == 1.0 and doc["chosen"]["language_id_accuracy"] == 1.0
    # The English clip is confident: at the default its edge text stands.
    assert not any(s["escalate"] for s in en["edge"])
    assert en["hybrid_default"] == " ".join(s["text"] for s in en["edge"])


def test_sweep_rule_is_the_shipped_flag_at_every_threshold() -> None:
    """escalates(confidence, temperature, t) == judge(...).escalate with escalate_below = t, for kept segments."""
    from dataclasses import replace

    from edge_node.core.confidence import SegmentFeatures, judge

    rng = np.random.default_rng(0)
    base = ConfidenceConfig()
    checked = 0
    for _ in range(2000):
        f = SegmentFeatures(
            avg_logprob=float(rng.uniform(-2.5, 0)),
            no_speech_prob=float(rng.uniform(0, 1)),
            compression_ratio=float(rng.uniform(1, 3)),
            min_token_prob=float(rng.uniform(0, 1)),
            mean_entropy=float(rng.uniform(0, 4)),
            temperature=float(rng.choice([0.0, 0.0, 0.2])),
            n_tokens=int(rng.integers(1, 30)),
        )
        for t in (0.0, 0.3, 0.6, 0.9):
            cfg = replace(base, escalate_below=t)
            v = judge(f, cfg)
            if v.drop:  # dropped segments are never emitted, so never escalated
                continue
            checked += 1
            assert hybrid_policy.escalates(v.confidence, f.temperature, t, base) == v.escalate
    assert checked > 1000


def test_window_for_and_pieces() -> None:
    windows = [(0.0, 10.0), (12.0, 30.0), (31.0, 40.0)]
    assert hybrid_policy.window_for(1.0, 2.0, windows) == (0.0, 10.0)
    assert hybrid_policy.window_for(9.0, 20.0, windows) == (12.0, 30.0)  # most overlap
    assert hybrid_policy.window_for(30.2, 30.4, windows) == (12.0, 30.0)  # no overlap: the nearest
    assert hybrid_policy.window_for(30.7, 30.9, windows) == (31.0, 40.0)
    with pytest.raises(ValueError):
        hybrid_policy.window_for(0.0, 1.0, [])
    assert list(hybrid_policy.pieces(10, 4)) == [(0, 4), (4, 8), (8, 10)]
    assert list(hybrid_policy.pieces(0, 4)) == []


def test_budget_refusals_follow_the_shipped_budget() -> None:
    pol = EscalationPolicy(budget_fraction=0.5, budget_window_s=100.0, budget_min_basis_s=10.0)
    # 10 s clips; the first three ask for all their audio: 10/10 > 0.5 refused, 10/20 ok, 10/30 > 0.5 refused...
    stream = [(10.0, [10.0]), (10.0, [10.0]), (10.0, [10.0]), (10.0, []), (10.0, [2.0, 2.0])]
    assert hybrid_policy.budget_refusals(stream, pol) == (2, 20.0)
    assert hybrid_policy.budget_refusals([(10.0, [1.0])] * 20, pol) == (0, 0.0)


def test_hybrid_hypothesis_replaces_only_escalated_segments() -> None:
    from edge_node.engine.transcriber import Segment
    from evaluation.hybrid_records import ClipRecord, CloudAnswer, hybrid_hypothesis
    from evaluation.manifest import ManifestRow

    def seg(text: str, confidence: float, start: float) -> Segment:
        return Segment(start, start + 1, text, -0.2, 0.01, 1.2, 0.5, 0.3, 0.0, confidence, confidence < 0.6, ())

    row = ManifestRow("c/1", "a.wav", "one two", "en", "c", 4.0)
    rec = ClipRecord(
        row, 4.0, (seg("one", 0.95, 0.0), seg("tu", 0.4, 2.0)), 0.5,
        {1: CloudAnswer("two", "en", 2.0, 1000, 1.5, "en")},
    )  # fmt: skip
    cfg = ConfidenceConfig()
    low = hybrid_hypothesis(rec, 0.3, cfg)
    assert (low.text, low.escalated_segments, low.bytes_sent, low.latency_s) == ("one tu", 0, 0, 0.5)
    mid = hybrid_hypothesis(rec, 0.6, cfg)
    assert (mid.text, mid.escalated_segments, mid.escalated_seconds, mid.bytes_sent) == ("one two", 1, 2.0, 1000)
    assert mid.latency_s == pytest.approx(2.0) and mid.segments == 2


def test_format_sweep_prints_one_line_per_threshold() -> None:
    from evaluation.manifest import ManifestRow
    from evaluation.report import format_sweep
    from evaluation.scoring import Hypothesis, score

    rows = [ManifestRow("a", "a.wav", "hello world", "en", "en-x", 2.0), ManifestRow("b", "b.wav", "", None, "m", 2.0)]
    points = [
        score(rows, [Hypothesis("a", "hello word"), Hypothesis("b", "")], 0.1),
        score(rows, [Hypothesis("a", "hello world", escalated_segments=1, escalated_seconds=2.0, bytes_sent=3000),
                     Hypothesis("b", "thanks")], 0.6),
    ]  # fmt: skip
    lines = format_sweep(points).splitlines()
    assert len(lines) == 4
    assert lines[2].split()[:3] == ["0.1", "50.0", "50.0"]
    # 0.6: 1 error (the music word) over 2 words; half the audio escalated at 1500 B/s; 1 music word.
    assert lines[3].split()[:7] == ["0.6", "50.0", "0.0", "50.0", "50.0", "100.0", "1500"]
    assert lines[3].split()[9] == "1"
