"""Wyoming protocol server (Home Assistant, voice satellites): audio in, transcript out, on the edge model.

The wyoming package's own reader trusts the client (an unbounded header line, `data_length` and
`payload_length` read in full), so events are read here with a bounded reader before any decoding; the package
is used for the event types, the writer and the audio conversion.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_node.core.escalation_policy import EscalationPolicy
from edge_node.daemon.wyoming_engine import Engine
from edge_node.engine.config import EdgeConfig
from shared import audio

if TYPE_CHECKING:
    from wyoming.event import Event

    from edge_node.adapters.cloud_client import CloudClientConfig, EscalationClient
    from edge_node.engine.transcriber import EdgeTranscriber

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024  # one JSON header line
MAX_DATA_BYTES = 64 * 1024  # the optional JSON data block (hot-word lists included)


@dataclass(frozen=True)
class WyomingConfig:
    host: str
    port: int
    edge: EdgeConfig
    device_id: str = "wyoming"
    policy: EscalationPolicy = field(default_factory=EscalationPolicy)
    cloud: CloudClientConfig | None = None
    cloud_deadline_s: float = 2.0  # wait this long for the cloud's text, then answer with the edge's
    late_answer_s: float = 30.0  # a call past the deadline stays open this much longer: its answer is logged
    max_cloud_calls: int = 16  # escalations in flight (late ones included); more: the edge text, no call
    max_audio_s: float = 30.0  # more audio in one utterance: error event, connection closed
    max_payload_bytes: int = 1 << 20  # one audio chunk's payload
    idle_timeout_s: float = 30.0  # no event for this long: error event, connection closed
    max_connections: int = 8
    version: str = "1"


class ClientError(Exception):
    """What the client did wrong: sent back as a Wyoming `error` event (code, text), then the connection ends."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


async def read_event(reader: asyncio.StreamReader, cfg: WyomingConfig) -> Event | None:
    """One event, each part bounded before it is read; None at end of stream."""
    from wyoming.event import Event

    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise ClientError("bad-event", "the stream ended inside an event header") from None
    except asyncio.LimitOverrunError:
        raise ClientError("header-too-large", f"event header over {MAX_HEADER_BYTES} bytes") from None
    try:
        head = json.loads(line)
        if not isinstance(head, dict) or not isinstance(head.get("type"), str):
            raise ValueError("not an object with a type")
        data_len = int(head.get("data_length") or 0)
        payload_len = int(head.get("payload_length") or 0)
        data = head.get("data") or {}
        if not isinstance(data, dict):
            raise ValueError("data is not an object")
    except (ValueError, TypeError) as exc:
        raise ClientError("bad-event", f"event header is not valid Wyoming JSON ({exc})") from None
    if not 0 <= data_len <= MAX_DATA_BYTES:
        raise ClientError("data-too-large", f"data_length {data_len} outside 0..{MAX_DATA_BYTES}")
    if not 0 <= payload_len <= cfg.max_payload_bytes:
        raise ClientError("payload-too-large", f"payload_length {payload_len} outside 0..{cfg.max_payload_bytes}")
    try:
        if data_len:
            extra = json.loads(await reader.readexactly(data_len))
            if not isinstance(extra, dict):
                raise ValueError("data block is not an object")
            data.update(extra)
        payload = await reader.readexactly(payload_len) if payload_len else None
    except asyncio.IncompleteReadError:
        raise ClientError("bad-event", "the stream ended inside an event") from None
    except ValueError as exc:
        raise ClientError("bad-event", f"event data is not valid JSON ({exc})") from None
    return Event(type=head["type"], data=data, payload=payload)


class Connection:
    """One client: transcribe? -> audio-start -> audio-chunk* -> audio-stop -> transcript."""

    def __init__(self, engine: Engine, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from wyoming.audio import AudioChunkConverter

        self.engine, self.reader, self.writer = engine, reader, writer
        self.converter = AudioChunkConverter(rate=audio.SAMPLE_RATE, width=2, channels=1)
        self.chunks: list[bytes] = []
        self.n_bytes = 0
        self.language: str | None = None
        self.hotwords: tuple[str, ...] = ()

    async def write(self, event: Event) -> None:
        from wyoming.event import async_write_event

        await async_write_event(event, self.writer)

    async def run(self) -> None:
        from wyoming.error import Error

        cfg = self.engine.cfg
        try:
            while True:
                try:
                    event = await asyncio.wait_for(read_event(self.reader, cfg), cfg.idle_timeout_s)
                except TimeoutError:
                    raise ClientError("idle-timeout", f"no event for {cfg.idle_timeout_s:g} s") from None
                if event is None or not await self.handle(event):
                    break
        except ClientError as exc:
            log.warning("wyoming client refused: %s", exc)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.write(Error(text=str(exc), code=exc.code).event())
                await self.writer.drain()
                await self._discard_input()
        except ConnectionError:
            pass

    async def _discard_input(self, budget_s: float = 1.0, max_bytes: int = 4 << 20) -> None:
        """Read (and drop) what the client is still sending for a moment: closing a socket with unread input
        resets it, and the reset can destroy the error event before the client reads it."""
        if self.writer.can_write_eof():
            self.writer.write_eof()
        loop = asyncio.get_running_loop()
        end, seen = loop.time() + budget_s, 0
        with contextlib.suppress(TimeoutError, asyncio.LimitOverrunError, ValueError):
            while seen < max_bytes and (left := end - loop.time()) > 0:
                block = await asyncio.wait_for(self.reader.read(65536), left)
                if not block:
                    return
                seen += len(block)

    async def handle(self, event: Event) -> bool:
        from wyoming.asr import Transcribe
        from wyoming.audio import AudioChunk, AudioStart, AudioStop
        from wyoming.info import Describe

        if Describe.is_type(event.type):
            await self.write(self.info())
        elif Transcribe.is_type(event.type):
            t = Transcribe.from_event(event)
            self.language = t.language
            names = [*(getattr(t, "transcript_names", None) or ()), *(getattr(t, "transcript_terms", None) or ())]
            self.hotwords = tuple(str(n)[:100] for n in names[:100])
        elif AudioStart.is_type(event.type):
            self.chunks, self.n_bytes = [], 0
        elif AudioChunk.is_type(event.type):
            self.add(AudioChunk.from_event(event))
        elif AudioStop.is_type(event.type):
            await self.finish()
            self.language, self.hotwords = None, ()
        return True

    def add(self, chunk: Any) -> None:
        if chunk.width not in (1, 2, 3, 4) or not 1 <= chunk.channels <= 8 or not 1000 <= chunk.rate <= 192_000:
            raise ClientError("bad-audio", f"unsupported audio {chunk.rate} Hz, {chunk.width} B, "
                              f"{chunk.channels} ch")
        try:
            pcm = self.converter.convert(chunk).audio
        except Exception as exc:  # audioop's errors (odd lengths) are plain Exceptions
            raise ClientError("bad-audio", f"audio chunk cannot be converted: {exc}") from None
        self.n_bytes += len(pcm)
        limit = self.engine.cfg.max_audio_s
        if self.n_bytes > limit * audio.SAMPLE_RATE * 2:
            raise ClientError("audio-too-long", f"utterance longer than {limit:g} s (--max-audio-s)")
        self.chunks.append(pcm)

    async def finish(self) -> None:
        from wyoming.asr import Transcript, TranscriptChunk, TranscriptStart, TranscriptStop

        pcm = b"".join(self.chunks)
        self.chunks, self.n_bytes = [], 0
        samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], np.int16).astype(np.float32) / 32768.0
        out = await self.engine.transcribe(samples, self.hotwords)
        log.info("wyoming transcript (%s%s, %.2f s audio): %s", out.source,
                 f" {out.segment_id}" if out.segment_id else "", out.result.duration, out.text)
        await self.write(TranscriptStart(language=out.language).event())
        parts = [s.text for s in out.result.segments] if out.source == "edge" else [out.text]
        for part in parts:
            await self.write(TranscriptChunk(text=part).event())
        context: dict[str, Any] = {"source": out.source}
        if out.segment_id:
            context["segment_id"] = out.segment_id  # names the late-answer log line, if one comes
        await self.write(Transcript(text=out.text, language=out.language, context=context).event())
        await self.write(TranscriptStop().event())

    def info(self) -> Event:
        from wyoming.info import AsrModel, AsrProgram, Attribution, Info

        cfg = self.engine.cfg
        attribution = Attribution(name="OpenAI Whisper", url="https://github.com/openai/whisper")
        model = AsrModel(name=cfg.edge.model_dir.name, attribution=attribution, installed=True,
                         description="Whisper on onnxruntime (edge)", version=cfg.version, languages=["en"])
        program = AsrProgram(name="whisper-edge", attribution=attribution, installed=True,
                             description="hybrid edge-cloud Whisper", version=cfg.version, models=[model],
                             supports_transcript_streaming=True)
        return Info(asr=[program]).event()


async def serve(cfg: WyomingConfig, transcriber: EdgeTranscriber, client: EscalationClient | None) -> None:
    engine = Engine(cfg, transcriber, client)
    try:
        await _serve(cfg, engine)
    finally:
        engine.close()


async def _serve(cfg: WyomingConfig, engine: Engine) -> None:
    active = 0
    stop = asyncio.Event()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active
        from wyoming.error import Error
        from wyoming.event import async_write_event

        try:
            if active >= cfg.max_connections:
                await async_write_event(Error(text=f"server busy: {cfg.max_connections} connections "
                                              "(--max-connections)", code="busy").event(), writer)
                return
            active += 1
            try:
                await Connection(engine, reader, writer).run()
            finally:
                active -= 1
        except Exception:  # one client's failure never ends the server
            log.exception("wyoming connection failed")
        finally:
            writer.close()

    server = await asyncio.start_server(on_client, cfg.host, cfg.port, limit=MAX_HEADER_BYTES)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("wyoming server on tcp://%s:%d (model %s)", cfg.host, cfg.port, cfg.edge.model_dir)
    async with server:
        await stop.wait()
    log.info("wyoming server stopped")


def run(cfg: WyomingConfig) -> int:
    from edge_node.adapters.cloud_client import EscalationClient
    from edge_node.engine.transcriber import EdgeTranscriber

    transcriber = EdgeTranscriber(cfg.edge)
    client = EscalationClient(cfg.cloud) if cfg.cloud else None
    try:
        asyncio.run(serve(cfg, transcriber, client))
    finally:
        if client is not None:
            client.close()
    return 0
