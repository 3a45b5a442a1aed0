"""Scoring rules on hand-made rows: known WER, no-speech rows, unknown references, escalation statistics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.manifest import ManifestRow, condition_family, parse_manifest
from evaluation.report import format_table, results_json
from evaluation.scoring import Hypothesis, OperatingPoint, evaluate, score, words
from shared.errors import UserError


def row(id: str, text: str | None, lang: str | None = "en", condition: str = "c", duration: float = 2.0):
    return ManifestRow(id, f"audio/{id}.wav", text, lang, condition, duration)


def test_normalizer_makes_digits_and_punctuation_equal() -> None:
    assert words("Press 1.", "en") == words("press one", "en")
    assert words("Hello, World!", "en") == ["hello", "world"]
    assert words("To leave the conference...", "en") == words("to leave the conference.", "en")
    assert words("it costs 3.50 dollars", "en") == ["it", "costs", "$3.50"]  # decimals survive
    # Non-English: accents are dropped (the es/fr transcripts omit them inconsistently), punctuation too.
    assert words("Código, número.", "es") == words("codigo numero", "es") == ["codigo", "numero"]
    # An unknown language is normalised as English, the fleet's language.
    assert words("Press 1.", None) == words("press one", None)


def test_known_wer_is_corpus_level() -> None:
    rows = [row("a", "press one for sales"), row("b", "goodbye")]
    # a: one substitution (sales -> sale) out of 4 words; b: one deletion of 1 word -> 2 errors / 5 words.
    point = score(rows, [Hypothesis("a", "Press 1 for sale."), Hypothesis("b", "")])
    assert point.wer == pytest.approx(2 / 5)
    assert point.by_condition["c"].errors == 2
    assert point.by_condition["c"].ref_words == 5


def test_no_speech_rows_count_every_word_as_an_error() -> None:
    rows = [row("s", "hello there"), row("m", "", lang=None, condition="music")]
    point = score(rows, [Hypothesis("s", "hello there"), Hypothesis("m", "Thank you for watching.")])
    assert point.no_speech_words == 4
    assert point.wer == pytest.approx(4 / 2)  # 4 insertions over the 2 reference words
    assert point.wer_by_condition == {"c": 0.0, "music": None}  # no reference words: no WER of its own
    assert point.by_condition["music"].no_speech_words == 4
    silent = score(rows, [Hypothesis("s", "hello there"), Hypothesis("m", "♪♪")])
    assert silent.no_speech_words == 0 and silent.wer == 0.0


def test_null_rows_are_excluded_from_wer_but_count_for_escalation_and_language() -> None:
    rows = [row("e", "good morning", duration=4.0), row("x", None, lang="es", condition="unk", duration=6.0)]
    hyps = [
        Hypothesis("e", "good morning"),
        Hypothesis(
            "x",
            "completely wrong words",
            language="es",
            escalated_segments=1,
            escalated_seconds=6.0,
            bytes_sent=12000,
        ),
    ]
    point = score(rows, hyps)
    assert point.wer == 0.0
    assert point.wer_by_condition["unk"] is None
    assert point.escalated_seconds_fraction == pytest.approx(6.0 / 10.0)
    assert point.non_english_escalated == 1.0
    assert point.language_id_accuracy == 1.0
    assert point.bytes_per_escalated_second == pytest.approx(2000.0)


def test_per_condition_split_and_escalation_statistics() -> None:
    rows = [
        row("a1", "please hold the line", condition="en-clean", duration=4.0),
        row("a2", "your call is important", condition="en-clean", duration=4.0),
        row("b1", "please hold the line", condition="en-white-5db", duration=2.0),
        row("s1", "uno dos tres", lang="es", condition="es-clean", duration=3.0),
        row("f1", "un deux trois", lang="fr", condition="fr-clean", duration=3.0),
    ]
    hyps = [
        Hypothesis("a1", "Please hold the line.", segments=2),
        Hypothesis("a2", "Your call is important!", segments=2),
        Hypothesis(
            "b1", "please old the", segments=2, escalated_segments=1, escalated_seconds=1.0, bytes_sent=500
        ),
        Hypothesis(
            "s1",
            "uno dos tres",
            language="es",
            escalated_segments=1,
            escalated_seconds=3.0,
            bytes_sent=1500,
            latency_s=0.5,
        ),
        Hypothesis("f1", "and uh", language="en"),  # not escalated: the edge kept French
    ]
    point = score(rows, hyps, threshold=0.4)
    assert point.threshold == 0.4
    assert point.wer_by_condition == {
        "en-clean": 0.0,
        "en-white-5db": pytest.approx(2 / 4),  # old/hold substituted, line deleted
        "es-clean": 0.0,
        "fr-clean": pytest.approx(3 / 3),
    }
    assert point.wer == pytest.approx((2 + 3) / (8 + 4 + 3 + 3))
    assert point.wer_by_language["en"] == pytest.approx(2 / 12)
    assert point.escalated_segments_fraction == pytest.approx(2 / 8)
    assert point.escalated_seconds_fraction == pytest.approx(4 / 16)
    assert point.english_escalated_seconds_fraction == pytest.approx(1 / 10)
    assert point.non_english_escalated == pytest.approx(1 / 2)
    assert point.non_english_clips == 2
    assert point.language_id_accuracy == 1.0  # only escalated clips count
    assert point.bytes_per_escalated_second == pytest.approx(2000 / 4)
    assert point.latency is None  # not every clip reported one
    assert point.by_condition["en-white-5db"].escalated_seconds_fraction == pytest.approx(0.5)


def test_operating_point_json_round_trip_has_issue_7_keys() -> None:
    rows = [row("a", "hello world"), row("m", "", lang=None, condition="music")]
    point = score(rows, [Hypothesis("a", "hello", latency_s=0.2), Hypothesis("m", "", latency_s=0.4)])
    obj = json.loads(json.dumps(point.to_json()))
    for key in (
        "threshold",
        "wer",
        "wer_by_condition",
        "escalated_seconds_fraction",
        "bytes_per_escalated_second",
        "non_english_escalated",
        "no_speech_words",
        "escalated_segments_fraction",
        "language_id_accuracy",
        "latency",
    ):
        assert key in obj
    assert obj["latency"]["p50_s"] == pytest.approx(0.3)
    assert OperatingPoint.from_json({**obj, "added_later": 1}) == point
    assert "hello" not in format_table({"edge": point})  # a table of figures, not transcripts
    assert "music" in format_table({"edge": point})


def test_missing_hypothesis_is_an_error() -> None:
    with pytest.raises(ValueError, match="no hypothesis"):
        score([row("a", "hi")], [])


def test_manifest_parsing_rejects_bad_rows() -> None:
    good = {"id": "a", "audio": "a.wav", "text": None, "lang": None, "condition": "c", "duration": 1.5}
    assert parse_manifest([json.dumps(good)])[0].text is None
    with pytest.raises(UserError, match="line 1: malformed JSON"):
        parse_manifest(["{"])
    with pytest.raises(UserError, match="missing key"):
        parse_manifest([json.dumps({"id": "a"})])
    with pytest.raises(UserError, match="duplicate id"):
        parse_manifest([json.dumps(good), json.dumps(good)])
    with pytest.raises(UserError, match="duration"):
        parse_manifest([json.dumps({**good, "duration": -1})])
    with pytest.raises(UserError, match="relative"):
        parse_manifest([json.dumps({**good, "audio": "/etc/passwd"})])
    with pytest.raises(UserError, match="no clips"):
        parse_manifest([])


def test_condition_family_is_computed_from_the_string() -> None:
    assert condition_family("en-clean-8k") == "en-clean"
    assert condition_family("en-white-10db") == "en-degraded"
    assert condition_family("fr-clean") == "fr-clean"
    assert condition_family("music") == "music"
    assert condition_family("de-street-noise") == "de-degraded"


def test_evaluate_runs_a_transcriber_over_a_manifest(tmp_path: Path) -> None:
    rows = [
        {
            "id": "a1",
            "audio": "a1.wav",
            "text": "hold the line please",
            "lang": "en",
            "condition": "a",
            "duration": 2.0,
        },
        {
            "id": "a2",
            "audio": "a2.wav",
            "text": "goodbye for now",
            "lang": "en",
            "condition": "a",
            "duration": 3.0,
        },
        {"id": "b1", "audio": "b1.wav", "text": "", "lang": None, "condition": "b", "duration": 10.0},
    ]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    outputs = {"a1.wav": "Hold the line, please.", "a2.wav": "goodbye", "b1.wav": "music"}
    seen: list[Path] = []

    def transcribe(path: Path) -> dict:
        seen.append(path)
        return {"text": outputs[path.name], "segments": 1}

    point, scores = evaluate(manifest, transcribe, mode="cloud", progress=False)
    assert seen == [tmp_path / "a1.wav", tmp_path / "a2.wav", tmp_path / "b1.wav"]
    assert point.wer == pytest.approx((0 + 2 + 1) / 7)
    assert point.escalated_seconds_fraction == 1.0  # cloud mode: everything went to the cloud
    assert point.bytes_per_escalated_second == pytest.approx(32000)
    assert point.latency is not None and point.latency["max_s"] >= 0
    assert [s.row.id for s in scores] == ["a1", "a2", "b1"]
    edge, _ = evaluate(manifest, transcribe, mode="edge", per_condition=1, conditions=["a"], progress=False)
    assert edge.clips == 1 and edge.escalated_seconds_fraction == 0.0 and edge.wer == 0.0
    with pytest.raises(UserError, match="no clips of condition"):
        evaluate(manifest, transcribe, conditions=["zz"], progress=False)
    both = results_json(edge, point, [point], chosen=point)
    assert set(both) == {"edge", "cloud", "hybrid", "chosen"} and both["edge"]["threshold"] is None
