"""The hybrid harness end to end on three clips (English, Spanish, music): the int8 edge, a real Redis, a real
`cloud-service serve` subprocess with base on a free port, escalations over gRPC as FLAC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bench import asterisk, hybrid_policy
from bench.hybrid_eval import HybridEvalConfig, run
from edge_node.confidence import ConfidenceConfig

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
    from shared.audio import load_audio

    for code in ("en", "es"):
        if not asterisk.available(code):
            pytest.skip(f"Asterisk {code} prompts are not installed (run `make setup`)")
    music = asterisk.music_files()
    if not music:
        pytest.skip("Asterisk music on hold is not installed (run `make setup`)")
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
    assert all(s["confidence"] < hybrid_policy.NOT_ENGLISH_BELOW for s in es["edge"])
    assert set(es["cloud_languages"].values()) == {"es"}
    assert es["hybrid_default"] == " ".join(es["cloud_segments"][str(i)] for i in range(len(es["edge"])))
    assert doc["chosen"]["non_english_escalated"] == 1.0 and doc["chosen"]["language_id_accuracy"] == 1.0
    # The English clip is confident: at the default its edge text stands.
    assert not any(s["escalate"] for s in en["edge"])
    assert en["hybrid_default"] == " ".join(s["text"] for s in en["edge"])
