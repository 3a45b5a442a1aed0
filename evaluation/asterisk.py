"""Find the Asterisk prompt recordings installed from Debian packages, with their transcripts.

See ../shared/notes/speech-data.md: en/es/fr prompts (8 kHz WAV; English also G.722 and GSM) and music on hold.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

SOUNDS = Path("/usr/share/asterisk/sounds")
DOCS = Path("/usr/share/doc")
MOH = Path("/usr/share/asterisk/moh")
LANG_DIRS = {"en": "en_US_f_Allison", "es": "es_MX_f_Allison", "fr": "fr_CA_f_June"}


@dataclass(frozen=True)
class Prompt:
    id: str  # e.g. "vm-goodbye" or "digits/1"
    lang: str
    text: str
    wav: Path

    def with_ext(self, ext: str) -> Path:
        return self.wav.with_suffix(ext)


def _transcripts(lang: str) -> dict[str, str]:
    path = DOCS / f"asterisk-core-sounds-{lang}" / f"core-sounds-{lang}.txt.gz"
    if not path.exists():
        return {}
    out: dict[str, str] = {}
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(";") or ":" not in line:
                continue
            name, text = line.split(":", 1)
            out[name.strip()] = text.strip()
    return out


def prompts(lang: str = "en", min_words: int = 1) -> list[Prompt]:
    """Prompts with a speech-only transcript (no `[...]` tone marks), sorted by id, deterministic."""
    base = SOUNDS / LANG_DIRS[lang]
    found: list[Prompt] = []
    for name, text in sorted(_transcripts(lang).items()):
        if "[" in text or not text:
            continue
        wav = base / f"{name}.wav"
        if not wav.is_file():
            continue
        if len(re.findall(r"\w+", text)) < min_words:
            continue
        found.append(Prompt(name, lang, text, wav))
    return found


def music_files() -> list[Path]:
    return sorted(MOH.glob("*.wav"))


def available(lang: str = "en") -> bool:
    return (SOUNDS / LANG_DIRS[lang]).is_dir() and bool(_transcripts(lang))
