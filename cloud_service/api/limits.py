"""Bounds on every string a device sends, and the rule that ties a segment id to its device.

Everything here is checked before any Redis, filesystem or model access: a request is refused on what it says,
never after storing or decoding it. Results, the in-flight map and Submit jobs are keyed by
(authenticated device, segment id), so these checks also keep those keys short and unambiguous.
"""

from __future__ import annotations

import math

from google.protobuf.message import Message

from proto.asr.v1 import asr_pb2
from shared.whisper_rules import check_prompt_text

# TranscribeRequest (Transcribe and Submit)
MAX_DEVICE_ID_CHARS = 64
MAX_SEGMENT_ID_CHARS = 128  # the edge's longest (stdin, 64-char device id) is about 105
MAX_LANGUAGE_CHARS = 16  # "detect", an ISO code, or a whisper name ("haitian creole" is the longest, 14)
# Whisper keeps only the last 223 prompt tokens; 4096 characters covers that for any script with room to spare.
MAX_PROMPT_CHARS = 4096
MAX_EDGE_TEXT_CHARS = 4096  # the edge's own hypothesis of at most 30 s of audio
MAX_EDGE_MODEL_VERSION_CHARS = 128
# segment_start is added to every returned time: a finite offset into the device's stream, not negative, and below
# ~31 years of seconds so that the sum stays exact to the millisecond in a double.
MAX_SEGMENT_START_S = 1e9
# ModelRequest (FetchModel)
MAX_ARTIFACT_NAME_CHARS = 128
MAX_ARTIFACT_VERSION_CHARS = 64
MAX_ARTIFACT_FILE_CHARS = 256

# ":" separates the device from the segment id in Redis keys (asr:result:{device}:{segment}); a device id
# holding one could alias another device's keys.
FORBIDDEN_DEVICE_CHARS = ":"


def _check_lengths(fields: tuple[tuple[str, str, int], ...]) -> None:
    for name, value, limit in fields:
        if len(value) > limit:
            raise ValueError(f"{name} is {len(value)} characters; the limit is {limit}")


def check_device_id(device_id: str) -> str:
    """The id itself; ValueError when it cannot name a device (empty, too long, spaces or ':')."""
    if not device_id or any(c.isspace() or c in FORBIDDEN_DEVICE_CHARS for c in device_id):
        raise ValueError(f"bad device id {device_id[:MAX_DEVICE_ID_CHARS]!r}: it must be non-empty, "
                         f"without spaces or {FORBIDDEN_DEVICE_CHARS!r}")
    _check_lengths((("device id", device_id, MAX_DEVICE_ID_CHARS),))
    return device_id


def _float_fields(msg: Message, prefix: str = "") -> list[tuple[str, float]]:
    """Every float/double field of `msg` and of the messages it holds, by dotted name (new fields included)."""
    out: list[tuple[str, float]] = []
    for fd in msg.DESCRIPTOR.fields:
        value = getattr(msg, fd.name)
        if isinstance(value, float):
            out.append((prefix + fd.name, value))
        elif isinstance(value, Message):
            out += _float_fields(value, f"{prefix}{fd.name}.")
    return out


def check_numbers(req: asr_pb2.TranscribeRequest) -> None:
    """NaN or infinity in any float field, or a segment_start outside [0, MAX_SEGMENT_START_S]: ValueError. A NaN
    segment_start came back as NaN segment times; the edge fields are stored and compared downstream."""
    for name, value in _float_fields(req):
        if not math.isfinite(value):
            raise ValueError(f"{name} is {value}; it must be a finite number")
    if not 0.0 <= req.segment_start <= MAX_SEGMENT_START_S:
        raise ValueError(f"segment_start is {req.segment_start:g}; it must be between 0 and "
                         f"{MAX_SEGMENT_START_S:g} seconds")


def check_transcribe_request(req: asr_pb2.TranscribeRequest) -> None:
    """Lengths, required fields, numbers and the prompt of a Transcribe/Submit request. ValueError naming the
    field and the rule."""
    _check_lengths((
        ("segment_id", req.segment_id, MAX_SEGMENT_ID_CHARS),
        ("device_id", req.device_id, MAX_DEVICE_ID_CHARS),
        ("language", req.language, MAX_LANGUAGE_CHARS),
        ("prompt", req.prompt, MAX_PROMPT_CHARS),
        ("edge.text", req.edge.text, MAX_EDGE_TEXT_CHARS),
        ("edge.model_version", req.edge.model_version, MAX_EDGE_MODEL_VERSION_CHARS),
    ))
    if not req.segment_id:
        raise ValueError("segment_id is required (the idempotency key)")
    if not req.device_id:
        raise ValueError("device_id is required")
    check_numbers(req)
    # Whisper's tokenizer raises on special-token markup: refused here, it cannot fail a batch of other devices.
    check_prompt_text(req.prompt)


def check_segment_owner(segment_id: str, device_id: str) -> None:
    """A segment id belongs to the device whose id (and a dash) it starts with; ValueError otherwise."""
    prefix = f"{device_id}-"
    if not segment_id.startswith(prefix) or len(segment_id) == len(prefix):
        raise ValueError(f"segment_id {segment_id[:48]!r} must start with {prefix!r} (the device id and a dash) "
                         "followed by the device's own segment key")


def check_model_request(req: asr_pb2.ModelRequest) -> None:
    _check_lengths((
        ("name", req.name, MAX_ARTIFACT_NAME_CHARS),
        ("version", req.version, MAX_ARTIFACT_VERSION_CHARS),
        ("file", req.file, MAX_ARTIFACT_FILE_CHARS),
    ))
