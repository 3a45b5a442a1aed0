"""The FastAPI app: POST /v1/audio/transcriptions and GET /v1/models, over the gRPC servicer's Batcher."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Form, Header, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from cloud_service.asr.audio_codec import AudioError, decode_upload
from cloud_service.asr.batching import DeadlineExpiredError, QueueFullError
from cloud_service.asr.model import AsrRequest, AsrResult
from cloud_service.http import errors, formats
from cloud_service.http.access import Access
from cloud_service.http.errors import ApiError
from cloud_service.http.fleet_routes import add_fleet_routes
from cloud_service.http.oauth_routes import add_oauth_routes
from cloud_service.oauth.tokens import SCOPE_TRANSCRIBE
from shared.hotwords import prompt_hotwords
from shared.whisper_rules import check_prompt_text

if TYPE_CHECKING:
    from cloud_service.api.server import EscalationServicer

log = logging.getLogger(__name__)

MODEL_ALIAS = "whisper-1"  # what OpenAI clients send by default
UPLOAD_CHUNK = 64 * 1024
# Bytes an upload may have: 30 s of 48 kHz stereo PCM16 WAV is 5.8 MB; more is not audio we would accept.
DEFAULT_MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_FIELD_CHARS = 1024
GRANULARITIES = ("word", "segment")


async def read_capped(upload: UploadFile, max_bytes: int) -> bytes:
    """The upload's bytes, refused with 413 as soon as they pass `max_bytes` (never read whole first)."""
    parts: list[bytes] = []
    total = 0
    while chunk := await upload.read(UPLOAD_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise ApiError(413, f"the uploaded file is larger than the limit of {max_bytes} bytes", "file_too_large")
        parts.append(chunk)
    return b"".join(parts)


class Transcriber:
    """One REST transcription: field checks, bounded decode in the servicer's pool, then the Batcher."""

    def __init__(self, servicer: EscalationServicer, max_upload_bytes: int) -> None:
        self.servicer = servicer
        self.max_upload_bytes = max_upload_bytes

    def check_fields(self, model: str, language: str, prompt: str, fmt: str, temperature: float,
                     granularities: list[str]) -> AsrRequest:
        asr = self.servicer.asr
        for name, value in (("model", model), ("language", language), ("prompt", prompt)):
            if len(value) > MAX_FIELD_CHARS:
                raise ApiError(400, f"{name} is longer than {MAX_FIELD_CHARS} characters", "invalid_field", name)
        if model not in (MODEL_ALIAS, asr.name, ""):
            raise ApiError(400, f"model {model!r} is not served here; use {MODEL_ALIAS!r} or {asr.name!r}",
                           "model_not_found", "model")
        if fmt not in formats.RESPONSE_FORMATS:
            raise ApiError(400, f"response_format {fmt!r} is not one of {', '.join(formats.RESPONSE_FORMATS)}",
                           "invalid_field", "response_format")
        if not 0.0 <= temperature <= 1.0:
            raise ApiError(400, "temperature must be between 0 and 1", "invalid_field", "temperature")
        bad = [g for g in granularities if g not in GRANULARITIES]
        if bad:
            raise ApiError(400, f"timestamp_granularities {bad} not in {list(GRANULARITIES)}", "invalid_field",
                           "timestamp_granularities[]")
        try:
            lang = asr.normalize_language(language)
            check_prompt_text(prompt)
        except ValueError as exc:
            raise ApiError(400, str(exc), "invalid_field") from None
        words = fmt == "verbose_json" and "word" in granularities
        # A prompt that reads as a list of short phrases also biases decoding toward them (docs/hotwords.md);
        # it still goes to Whisper as its initial prompt.
        return AsrRequest(samples=_EMPTY, language=lang, prompt=prompt or None, word_timestamps=words,
                          hotwords=prompt_hotwords(prompt))

    async def decode(self, data: bytes) -> Any:
        sv = self.servicer
        if sv.decode_slots.locked():
            raise ApiError(429, f"server busy: {sv.config.max_decodes} audio decodes already running; retry later",
                           "server_busy")
        try:
            async with sv.decode_slots:
                return await asyncio.get_running_loop().run_in_executor(
                    sv._decode_pool, decode_upload, data, sv.config.max_audio_s)
        except AudioError as exc:
            raise ApiError(400, str(exc), "invalid_audio", "file") from None

    async def run(self, req: AsrRequest) -> AsrResult:
        try:
            result, _ = await self.servicer.batcher.submit(req, None)
            return result
        except QueueFullError as exc:
            raise ApiError(429, str(exc), "server_busy") from None
        except DeadlineExpiredError as exc:
            raise ApiError(503, str(exc), "timeout") from None
        except Exception as exc:
            log.exception("REST transcription failed")
            raise ApiError(500, f"decoding failed on the server ({type(exc).__name__}); it is logged there; "
                           "retry later", "server_error") from None


_EMPTY: Any = None  # filled in after the decode: fields are checked before any audio is touched


def create_app(servicer: EscalationServicer, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> FastAPI:
    from dataclasses import replace

    app = FastAPI(title="whisper-fleet", docs_url=None, redoc_url=None, openapi_url=None)
    errors.install(app)
    tr = Transcriber(servicer, max_upload_bytes)
    access = Access(servicer)
    add_oauth_routes(app, servicer, access, servicer.config.oauth_token_ttl_s)
    add_fleet_routes(app, servicer, access)

    @app.middleware("http")
    async def cap_body(request: Request, call_next: Any) -> Response:
        # Refuse a declared over-size body before multipart parsing spools it anywhere.
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_upload_bytes + 64 * 1024:
            return JSONResponse(errors.error_body(413, f"the request body is larger than the limit of "
                                                  f"{max_upload_bytes} bytes", "file_too_large"), 413)
        response: Response = await call_next(request)
        return response

    @app.get("/v1/models")
    async def models(authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        await access.authorize(authorization, SCOPE_TRANSCRIBE)
        now = int(time.time())
        return {"object": "list", "data": [
            {"id": mid, "object": "model", "created": now, "owned_by": "whisper-fleet"}
            for mid in (MODEL_ALIAS, servicer.asr.name)]}

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(
        file: UploadFile,
        model: Annotated[str, Form()] = MODEL_ALIAS,
        language: Annotated[str, Form()] = "",
        prompt: Annotated[str, Form()] = "",
        response_format: Annotated[str, Form()] = "json",
        temperature: Annotated[float, Form()] = 0.0,
        granularities: Annotated[list[str] | None, Form(alias="timestamp_granularities[]")] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        client = (await access.authorize(authorization, SCOPE_TRANSCRIBE)).name
        gran = granularities or []
        req = tr.check_fields(model, language, prompt, response_format, temperature, gran)
        if not await servicer.store.allow(f"rest:{client}", servicer.config.rate_limit_per_min):
            raise ApiError(429, f"rate limit of {servicer.config.rate_limit_per_min} requests/min exceeded",
                           "rate_limit_exceeded")
        audio = await tr.decode(await read_capped(file, max_upload_bytes))
        result = await tr.run(replace(req, samples=audio.samples))
        body = formats.render(response_format, result, audio.seconds, gran)
        if isinstance(body, dict):
            return JSONResponse(body)
        return PlainTextResponse(body, media_type=formats.MEDIA_TYPES[response_format])

    return app
