"""Conversions between the core's results and the asr.v1 protobuf messages (shared by server and worker)."""

from __future__ import annotations

from typing import Any

from cloud_service.asr.audio_codec import decode_audio
from cloud_service.asr.model import AsrModel, AsrRequest, AsrResult
from proto.asr.v1 import asr_pb2


def to_asr_request(req: asr_pb2.TranscribeRequest, asr: AsrModel, max_audio_s: float) -> AsrRequest:
    """Decode and check a request's audio and language. Raises AudioError / ValueError, saying why."""
    audio = decode_audio(int(req.audio.encoding), int(req.audio.sample_rate), req.audio.data, max_audio_s)
    language = asr.normalize_language(req.language)
    return AsrRequest(audio.samples, language, req.prompt or None)


def to_response(
    req: asr_pb2.TranscribeRequest, device: str, res: AsrResult, asr: AsrModel, queue_ms: float, total_ms: float
) -> asr_pb2.TranscribeResponse:
    """The reply for `device`, the device the request was admitted for (not whatever its body claims)."""
    return asr_pb2.TranscribeResponse(
        segment_id=req.segment_id,
        device_id=device,
        text=res.text,
        language=res.language,
        segments=[
            asr_pb2.Segment(
                start=req.segment_start + s.start,
                end=req.segment_start + s.end,
                text=s.text,
                avg_logprob=s.avg_logprob,
                no_speech_prob=s.no_speech_prob,
            )
            for s in res.segments
        ],
        avg_logprob=res.avg_logprob,
        no_speech_prob=res.no_speech_prob,
        temperature=res.temperature,
        model_name=asr.name,
        model_version=asr.version,
        timing=asr_pb2.ServerTiming(
            queue_ms=queue_ms, inference_ms=res.inference_ms, total_ms=total_ms, batch_size=res.batch_size
        ),
    )


def job_fields(
    req: asr_pb2.TranscribeRequest, fleet: str, enqueued: float, *, device: str
) -> dict[str, bytes | str]:
    """The fields of one Redis Stream entry for a Submit job (read back by the worker). `device` is the one the
    request was authenticated as at admission: the worker keys the result and picks the topic by it."""
    return {
        "request": req.SerializeToString(),
        "fleet": fleet,
        "device": device,
        "segment_id": req.segment_id,
        "enqueued": f"{enqueued:.3f}",
    }


def to_json(resp: asr_pb2.TranscribeResponse) -> str:
    from google.protobuf import json_format

    return json_format.MessageToJson(resp, preserving_proto_field_name=True, indent=None)


def parse_request(data: Any) -> asr_pb2.TranscribeRequest:
    return asr_pb2.TranscribeRequest.FromString(bytes(data))
