"""The plot renders from issue 7's JSON shape, with and without per-condition detail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.plot import OVERALL, main, panel_value, plot_results

CONDITIONS = {  # condition: (edge WER, cloud WER, reference words, seconds); music has no words
    "en-clean-8k": (0.03, 0.04, 300, 100.0),
    "en-clean-g722": (0.025, 0.03, 300, 100.0),
    "en-white-10db": (0.12, 0.08, 300, 100.0),
    "en-babble-10db": (0.30, 0.20, 300, 100.0),
    "es-clean": (1.10, 0.25, 400, 200.0),
    "fr-clean": (1.05, 0.30, 400, 180.0),
    "music": (0.0, 0.0, 0, 300.0),
}


def point(threshold: float | None, share: float) -> dict:
    """A synthetic operating point: `share` of each condition escalated; WER moves from edge to cloud."""
    by, wers = {}, {}
    for cond, (edge, cloud, ref, seconds) in CONDITIONS.items():
        # Harder conditions escalate first: their share grows faster.
        s = min(1.0, share * (1 + 4 * edge))
        wer = edge + (min(edge, cloud) * 0.9 - edge) * s if share < 1 else cloud
        words = 0 if ref else round(20 * (1 - s))
        errors = round(wer * ref) if ref else words
        by[cond] = {
            "clips": 10,
            "audio_seconds": seconds,
            "ref_words": ref,
            "errors": errors,
            "wer": errors / ref if ref else None,
            "no_speech_words": words,
            "segments": 20,
            "escalated_segments": round(20 * s),
            "escalated_seconds": seconds * s,
            "escalated_seconds_fraction": s,
        }
        wers[cond] = by[cond]["wer"]
    total_ref = sum(v["ref_words"] for v in by.values())
    seconds = sum(v["audio_seconds"] for v in by.values())
    return {
        "threshold": threshold,
        "wer": sum(v["errors"] for v in by.values()) / total_ref,
        "wer_by_condition": wers,
        "escalated_seconds_fraction": sum(v["escalated_seconds"] for v in by.values()) / seconds,
        "bytes_per_escalated_second": 4100.0,
        "non_english_escalated": min(1.0, 2 * share),
        "no_speech_words": sum(v["no_speech_words"] for v in by.values()),
        "by_condition": by,
    }


def synthetic_results() -> dict:
    hybrid = [
        point(t, share) for t, share in [(0.2, 0.05), (0.35, 0.12), (0.5, 0.2), (0.65, 0.35), (0.8, 0.6)]
    ]
    return {"edge": point(None, 0.0), "cloud": point(None, 1.0), "hybrid": hybrid, "chosen": hybrid[2]}


def test_plot_renders_a_png_with_a_panel_per_family(tmp_path: Path) -> None:
    out = plot_results(synthetic_results(), tmp_path / "plot.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # five panels of lines and labels, not an empty canvas


def test_panel_pools_conditions_and_switches_to_words_for_music() -> None:
    results = synthetic_results()
    edge = results["edge"]
    v = panel_value(edge, ["en-clean-8k", "en-clean-g722"])
    assert v.x == 0.0
    assert v.y == pytest.approx(100 * (9 + 8) / 600)  # errors pooled over both conditions
    music = panel_value(edge, ["music"], words_per_clip=True)
    assert music.y == pytest.approx(2.0)  # 20 words over 10 clips
    assert panel_value(results["cloud"], None).x == pytest.approx(100.0)
    # Without by_condition: mean of the conditions' WERs and the overall escalated share.
    bare = {k: v for k, v in results["chosen"].items() if k != "by_condition"}
    v = panel_value(bare, ["es-clean", "fr-clean"])
    wers = [results["chosen"]["wer_by_condition"][c] for c in ("es-clean", "fr-clean")]
    assert v.y == pytest.approx(100 * sum(wers) / 2)
    assert v.x == pytest.approx(100 * results["chosen"]["escalated_seconds_fraction"])
    assert OVERALL == "all conditions"


def test_cli_writes_the_png_and_rejects_bad_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "results.json"
    good.write_text(json.dumps(synthetic_results()))
    assert main([str(good), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main([str(bad), "--out", str(tmp_path / "q.png")]) != 0
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    assert main([str(empty), "--out", str(tmp_path / "q.png")]) != 0
    err = capsys.readouterr().err
    assert "cannot read results" in err and "no operating points" in err
    assert "Traceback" not in err
