"""The response bodies of /v1/audio/transcriptions (json, text, srt, vtt, verbose_json). Pure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cloud_service.asr.model import AsrResult, AsrSegment

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
MEDIA_TYPES = {"json": "application/json", "verbose_json": "application/json", "text": "text/plain",
               "srt": "application/x-subrip", "vtt": "text/vtt"}


def timestamp(seconds: float, sep: str) -> str:
    """HH:MM:SS<sep>mmm, rounded to the millisecond (sep ',' for SRT, '.' for WebVTT)."""
    ms = max(0, round(seconds * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt(segments: Sequence[AsrSegment]) -> str:
    blocks = [f"{i}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{s.text.strip()}\n"
              for i, s in enumerate(segments, 1)]
    return "\n".join(blocks)


def vtt(segments: Sequence[AsrSegment]) -> str:
    blocks = [f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{s.text.strip()}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(blocks)


def verbose_json(res: AsrResult, duration: float, words: bool, segments: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"task": "transcribe", "language": res.language, "duration": round(duration, 3),
                            "text": res.text.strip()}
    if segments:
        body["segments"] = [
            {"id": i, "seek": 0, "start": s.start, "end": s.end, "text": s.text, "tokens": [],
             "temperature": res.temperature, "avg_logprob": s.avg_logprob,
             "compression_ratio": res.compression_ratio, "no_speech_prob": s.no_speech_prob}
            for i, s in enumerate(res.segments)
        ]
    if words:
        body["words"] = [{"word": w.word, "start": w.start, "end": w.end} for w in res.words]
    return body


def render(fmt: str, res: AsrResult, duration: float, granularities: Sequence[str]) -> str | dict[str, Any]:
    """The body for `fmt` (a str for the text formats, a dict for the JSON ones)."""
    if fmt == "text":
        return res.text.strip() + "\n"
    if fmt == "srt":
        return srt(res.segments)
    if fmt == "vtt":
        return vtt(res.segments)
    if fmt == "verbose_json":
        want_words = "word" in granularities
        want_segments = "segment" in granularities or not granularities
        return verbose_json(res, duration, want_words, want_segments)
    return {"text": res.text.strip()}
