"""Decode and process audio with the system tools (ffmpeg, sox) and soundfile, always to 16 kHz float32 mono.

The corpus builder's I/O: subprocess calls over pipes (no temporary files); failures are UserErrors.
"""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

import numpy as np

from evaluation import asterisk
from evaluation import degrade as dg
from shared.audio import resample
from shared.errors import UserError

SAMPLE_RATE = 16000


def duration(path: Path) -> float:
    import soundfile as sf

    return float(sf.info(str(path)).duration)


def run_tool(cmd: list[str], stdin: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    except FileNotFoundError:
        raise UserError(f"{cmd[0]} is not installed (apt-get install {cmd[0]})") from None
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip()[-300:]
        raise UserError(f"{' '.join(cmd[:6])}... failed: {detail}")
    return done.stdout


def pcm16_bytes(data: bytes) -> np.ndarray:
    return dg.from_pcm16(np.frombuffer(data, dtype="<i2"))


def read_wav(path: str, offset_s: float = 0.0, seconds: float | None = None) -> np.ndarray:
    import soundfile as sf

    info = sf.info(path)
    start = round(offset_s * info.samplerate)
    frames = -1 if seconds is None else round(seconds * info.samplerate)
    x, rate = sf.read(path, start=start, frames=frames, dtype="float32", always_2d=True)
    return resample(x.mean(axis=1).astype(np.float32), rate)


@cache
def g722(prompt_id: str) -> np.ndarray:
    """The 16 kHz decode of the prompt's G.722 file: the clean wideband base of the degraded conditions."""
    path = asterisk.SOUNDS / asterisk.LANG_DIRS["en"] / f"{prompt_id}.g722"
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "g722", "-i", str(path)]
    return pcm16_bytes(run_tool([*cmd, "-ar", str(SAMPLE_RATE), "-ac", "1", "-f", "s16le", "-"]))


def gsm(prompt_id: str) -> np.ndarray:
    path = asterisk.SOUNDS / asterisk.LANG_DIRS["en"] / f"{prompt_id}.gsm"
    decoded = run_tool(["sox", str(path), "-t", "raw", "-e", "signed", "-b", "16", "-"])  # GSM 6.10 is 8 kHz
    return resample(pcm16_bytes(decoded), 8000)


def sox_effect(x: np.ndarray, effect: tuple[str, ...]) -> np.ndarray:
    raw = ["-t", "raw", "-r", str(SAMPLE_RATE), "-e", "floating-point", "-b", "32", "-c", "1"]
    out = run_tool(["sox", "-V1", *raw, "-", *raw, "-", *effect], stdin=x.astype("<f4").tobytes())
    return dg.limit_peak(np.frombuffer(out, dtype="<f4").astype(np.float32))
