"""The corpus builder's pure parts: transcript cleaning and its command line's errors (no installed sounds needed).

The builder itself, on the installed Asterisk packages, is tested in tests/integration/test_corpus.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluation.corpus import main, reference_text
from tests.audio_fixtures import data_prompts


def test_cli_reports_bad_arguments_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "--out", str(tmp_path / "c"), "--per-condition", "0", "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "--per-condition must be >= 1" in err and "Traceback" not in err
    assert main(["summary", str(tmp_path / "missing.jsonl")]) != 0
    assert "manifest not found" in capsys.readouterr().err


def test_reference_text_cleans_transcript_notes() -> None:
    assert reference_text("When done, hang up. (simple tone sound plays)", "en") == "When done, hang up."
    assert (
        reference_text("press * to pause, press # to exit", "en")
        == "press star to pause, press pound to exit"
    )
    assert reference_text("(3 seconds of silence)", "en") is None
    assert reference_text("Appuyez sur * pour continuer maintenant", "fr") is None


def test_reference_text_keeps_the_checked_in_transcripts() -> None:
    for lang in ("en", "es", "fr"):
        for p in data_prompts(lang):
            assert reference_text(p.text, lang) == p.text, p.id

