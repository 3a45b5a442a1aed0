"""The evaluation corpus manifest: `manifest.jsonl`, one JSON object per clip.

Required keys: `id` (unique string), `audio` (path relative to the manifest), `text` (the reference: a string,
`""` for no speech, `null` when unknown), `lang` (ISO 639-1 code or null), `condition` (free-form string),
`duration` (seconds). Other keys (e.g. `source`, `snr_db`) are kept in `extra` and ignored by the tools.

Conditions are never listed anywhere in code: tools read them from the manifest. `condition_family` groups
them for plots by a rule on the string.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import UserError

REQUIRED_KEYS = ("id", "audio", "text", "lang", "condition", "duration")


@dataclass(frozen=True)
class ManifestRow:
    id: str
    audio: str
    text: str | None
    lang: str | None
    condition: str
    duration: float
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "audio": self.audio,
            "text": self.text,
            "lang": self.lang,
            "condition": self.condition,
            "duration": self.duration,
        }
        out.update(self.extra)
        return out


def parse_row(obj: object, where: str = "row") -> ManifestRow:
    """Validate one decoded JSON object; a bad one raises UserError naming `where` and the problem."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise UserError(f"{where}: missing key(s) {', '.join(missing)}")
    for key in ("id", "audio", "condition"):
        if not isinstance(obj[key], str) or not obj[key]:
            raise UserError(f"{where}: {key!r} must be a non-empty string")
    for key in ("text", "lang"):
        if obj[key] is not None and not isinstance(obj[key], str):
            raise UserError(f"{where}: {key!r} must be a string or null")
    duration = obj["duration"]
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        raise UserError(f"{where}: 'duration' must be a number")
    if not math.isfinite(duration) or duration < 0:
        raise UserError(f"{where}: 'duration' must be a finite number >= 0, got {duration}")
    if Path(obj["audio"]).is_absolute():
        raise UserError(f"{where}: 'audio' must be relative to the manifest, got {obj['audio']}")
    extra = {k: v for k, v in obj.items() if k not in REQUIRED_KEYS}
    return ManifestRow(
        id=obj["id"],
        audio=obj["audio"],
        text=obj["text"],
        lang=obj["lang"] or None,
        condition=obj["condition"],
        duration=float(duration),
        extra=extra,
    )


def parse_manifest(lines: Iterable[str], name: str = "manifest") -> list[ManifestRow]:
    rows: list[ManifestRow] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: malformed JSON ({exc.msg})") from None
        row = parse_row(obj, where)
        if row.id in seen:
            raise UserError(f"{where}: duplicate id {row.id!r}")
        seen.add(row.id)
        rows.append(row)
    if not rows:
        raise UserError(f"{name}: no clips")
    return rows


def read_manifest(path: Path) -> list[ManifestRow]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"manifest not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read manifest {path}: {exc}") from None
    return parse_manifest(text.splitlines(), str(path))


def write_manifest(path: Path, rows: Iterable[ManifestRow]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row.to_json(), ensure_ascii=False, sort_keys=False) + "\n")


def conditions(rows: Iterable[ManifestRow]) -> list[str]:
    """Conditions in order of first appearance."""
    return list(dict.fromkeys(row.condition for row in rows))


def condition_family(condition: str) -> str:
    """Group a condition for plotting: the text before the first '-', plus 'clean' or 'degraded'.

    'en-clean-8k' -> 'en-clean', 'en-white-10db' -> 'en-degraded', 'es-clean' -> 'es-clean',
    'music' -> 'music'.
    """
    prefix, _, rest = condition.partition("-")
    if not rest:
        return prefix
    return f"{prefix}-clean" if "clean" in rest.split("-") else f"{prefix}-degraded"
