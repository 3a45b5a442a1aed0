"""Hypothesis strategies for what other parties send: wire audio, request fields, JSON payloads.

Each strategy mixes well-formed values (so cases reach deep code) with hostile ones: oversized, non-finite,
special-token markup, mutated container bytes, unknown enum values.
"""

from __future__ import annotations

import io
import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from hypothesis import strategies as st

from proto.asr.v1 import asr_pb2
from tests.audio_fixtures import data_prompts

MAX_ENUM = 2**31 - 1


@cache
def speech_16k(seconds: float = 1.5) -> np.ndarray:
    """The first checked-in English prompt, as 16 kHz float32, cut to `seconds`."""
    samples, rate = sf.read(data_prompts("en")[0].wav, dtype="float32")
    if samples.ndim > 1:
        samples = samples[:, 0]
    if rate != 16_000:
        import soxr

        samples = soxr.resample(samples, rate, 16_000)
    return np.ascontiguousarray(samples[: int(seconds * 16_000)], dtype=np.float32)


@cache
def container(fmt: str, seconds: float = 1.0) -> bytes:
    """Real speech in a container soundfile writes: FLAC or OGG (Opus)."""
    buf = io.BytesIO()
    subtype = {"FLAC": "PCM_16", "OGG": "OPUS"}[fmt]
    sf.write(buf, speech_16k(seconds), 16_000, format=fmt, subtype=subtype)
    return buf.getvalue()


def pcm16(samples: np.ndarray) -> bytes:
    return bytes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with a few bytes flipped, a slice cut out, truncated, or junk appended."""
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(["flip", "cut", "truncate", "append", "dup"]))
        if not out:
            break
        i = draw(st.integers(0, len(out) - 1))
        if op == "flip":
            out[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del out[i : i + draw(st.integers(1, 64))]
        elif op == "truncate":
            del out[i:]
        elif op == "append":
            out += draw(st.binary(max_size=256))
        else:
            out[i:i] = out[i : i + draw(st.integers(1, 512))]
    return bytes(out)


def valid_audio() -> st.SearchStrategy[asr_pb2.Audio]:
    """Real speech, well encoded: PCM16 (three lengths), FLAC, Ogg/Opus."""
    return st.one_of(
        st.builds(lambda s: asr_pb2.Audio(encoding=asr_pb2.Audio.PCM16, sample_rate=16_000, data=pcm16(speech_16k(s))),
                  st.sampled_from([0.25, 0.5, 1.0])),
        st.just(asr_pb2.Audio(encoding=asr_pb2.Audio.FLAC, sample_rate=16_000, data=container("FLAC"))),
        st.just(asr_pb2.Audio(encoding=asr_pb2.Audio.OPUS, sample_rate=16_000, data=container("OGG"))),
    )


def wire_audio() -> st.SearchStrategy[asr_pb2.Audio]:
    """Audio messages: valid speech in each encoding, mutated containers, random bytes, odd rates and enums."""
    encodings = st.one_of(
        st.sampled_from([asr_pb2.Audio.PCM16, asr_pb2.Audio.FLAC, asr_pb2.Audio.OPUS, 0]),
        st.integers(-MAX_ENUM, MAX_ENUM),
    )
    rates = st.one_of(st.sampled_from([16_000, 8_000, 48_000, 44_100, 0, 1]), st.integers(0, 2**32 - 1))
    valid = valid_audio()
    data = st.one_of(
        st.binary(max_size=4096),
        st.sampled_from(["FLAC", "OGG"]).flatmap(lambda f: mutated(container(f))),
        st.builds(lambda n: pcm16(speech_16k(1.0))[:n], st.integers(0, 32_000)),
    )
    hostile = st.builds(lambda e, r, d: asr_pb2.Audio(encoding=e, sample_rate=r, data=d), encodings, rates, data)
    return st.one_of(valid, hostile)


def hostile_text(max_size: int = 200) -> st.SearchStrategy[str]:
    """Text a tokenizer or a key scheme may choke on: special tokens, NUL, separators, huge strings."""
    return st.one_of(
        st.text(max_size=max_size),
        st.sampled_from(["<|endoftext|>", "<|en|>", "<|0.00|>", "a:b", "\x00", " ", "../..", "\u202e", "é" * 70]),
        st.builds(lambda n, c: c * n, st.integers(1, 10_000), st.sampled_from(["x", "ü", "<|", "|>", ":"])),
    )


def floats_any() -> st.SearchStrategy[float]:
    return st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 3600))


def json_values() -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=6),
        max_leaves=30,
    )


@st.composite
def mutated_json(draw: st.DrawFn, doc: dict[str, Any]) -> bytes:
    """`doc` with keys dropped, values replaced by arbitrary JSON, keys added; sometimes not JSON at all."""
    out = json.loads(json.dumps(doc))
    keys = sorted(out)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["drop", "replace", "add"]))
        if op == "drop" and keys:
            out.pop(draw(st.sampled_from(keys)), None)
        elif op == "replace" and keys:
            out[draw(st.sampled_from(keys))] = draw(json_values())
        else:
            out[draw(st.text(max_size=30))] = draw(json_values())
    raw = json.dumps(out).encode()
    return draw(st.one_of(st.just(raw), mutated(raw), st.binary(max_size=512)))


def model_files(root: Path, name: str) -> list[str]:
    doc = json.loads((root / name / "manifest.json").read_text())
    return [*sorted(doc["files"]), "manifest.json", "manifest.sig"]
