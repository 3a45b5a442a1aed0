"""`edge-node run`: transcribe audio as it comes, answer at once, escalate what the edge doubts, never lose it.

Flow per segment: edge text -> `segment` event at once -> if the policy escalates and the budget allows, the
request is written to the encrypted outbox *before* the event goes out -> a sender thread drains the outbox over
gRPC (backoff with jitter, circuit breaker) -> the cloud's answer is recorded in the same transaction that removes
the request -> `revision` event. A crash anywhere replays from the outbox; the cloud dedupes by segment_id.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_node.cloud_client import CloudClientConfig, CloudError, EscalationClient
from edge_node.config import EdgeConfig
from edge_node.escalation_policy import EscalationBudget, EscalationPolicy, language_hint
from edge_node.events import EventWriter
from edge_node.outbox import Outbox, OutboxLimits, create_key, load_key
from edge_node.retry import BackoffPolicy, BreakerPolicy, CircuitBreaker
from edge_node.sources import AudioChunk, ProcessedLog, read_file, read_pcm16_stream, watch_directory
from edge_node.transcribe import EdgeTranscriber, Segment
from shared import audio
from shared.wire_audio import WireEncoding, encode

log = logging.getLogger(__name__)

SEGMENT_PAD_S = 0.1  # context on each side of a segment sent to the cloud


@dataclass(frozen=True)
class DaemonConfig:
    source: str  # a file, a directory, or "-" for PCM16 16 kHz mono on stdin
    device_id: str
    state_dir: Path
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    policy: EscalationPolicy = field(default_factory=EscalationPolicy)
    cloud: CloudClientConfig | None = None  # None: edge only
    outbox_key_file: Path | None = None  # default: state_dir/outbox.key, made on first start
    outbox_limits: OutboxLimits = field(default_factory=OutboxLimits)
    wire: WireEncoding = WireEncoding.FLAC
    events: Path | None = None  # default: stdout
    exit_when_drained: bool | None = None  # default: yes for a file or stdin, no for a directory
    heartbeat_file: Path | None = None
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    stream_chunk_s: float = 20.0

    @property
    def source_kind(self) -> str:
        if self.source == "-":
            return "stdin"
        return "dir" if Path(self.source).is_dir() else "file"


class EdgeDaemon:
    def __init__(self, config: DaemonConfig, transcriber: EdgeTranscriber | None = None) -> None:
        from proto.asr.v1 import asr_pb2

        self._pb = asr_pb2
        self.config = config
        self.stop = threading.Event()
        self._sender_stop = threading.Event()
        self._wake = threading.Event()
        config.state_dir.mkdir(parents=True, exist_ok=True)
        key_file = config.outbox_key_file or config.state_dir / "outbox.key"
        if config.outbox_key_file is None and not key_file.exists():
            create_key(key_file)
            log.info("created outbox key %s", key_file)
        self.outbox = Outbox(config.state_dir / "outbox.db", load_key(key_file), config.outbox_limits)
        self.events = EventWriter(config.events)
        self.transcriber = transcriber or EdgeTranscriber(config.edge)
        self.budget = EscalationBudget(config.policy)
        self.breaker = CircuitBreaker(config.breaker)
        self.client = EscalationClient(config.cloud) if config.cloud else None
        self.processed = ProcessedLog(config.state_dir / "processed.txt")
        self.counters = {"segments": 0, "escalated": 0, "over_budget": 0, "revisions": 0}

    # -- main loop -----------------------------------------------------------------------------------------------
    def run(self) -> int:
        self._install_signals()
        self._emit_recorded_answers()
        sender = threading.Thread(target=self._send_loop, name="escalation-sender", daemon=True)
        if self.client:
            sender.start()
        kind = self.config.source_kind
        log.info("edge node %s reading %s (%s)", self.config.device_id, self.config.source, kind)
        try:
            for chunk in self._chunks(kind):
                self.handle_chunk(chunk)
                if chunk.last and kind != "stdin":
                    self.processed.add(chunk.key)
                if self.stop.is_set():
                    break
            drain = self.config.exit_when_drained
            if drain is None:
                drain = kind != "dir"
            if kind == "dir" and not self.stop.is_set():
                self.stop.wait()
            elif drain and self.client:
                self._wait_drained()
        finally:
            self._sender_stop.set()
            self._wake.set()
            if sender.is_alive():
                sender.join(timeout=10)
            self._shutdown()
        return 0

    def _chunks(self, kind: str) -> Iterator[AudioChunk]:
        if kind == "stdin":
            yield from read_pcm16_stream(sys.stdin.buffer, self.stop, self.config.stream_chunk_s,
                                         stream_id=f"{self.config.device_id}-{int(time.time() * 1000)}")
        elif kind == "dir":
            yield from watch_directory(Path(self.config.source), self.processed, self.stop)
        else:
            chunk = read_file(Path(self.config.source))
            if chunk.key in self.processed:
                log.info("%s was fully processed before; only pending escalations remain", chunk.name)
                return
            yield chunk

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_signal(signum: int, _frame: Any) -> None:
            log.info("%s: finishing the current chunk, then stopping", signal.Signals(signum).name)
            self.stop.set()
            self._wake.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def _wait_drained(self) -> None:
        while not self.stop.is_set():
            stats = self.outbox.stats()
            if stats["pending"] == 0:
                return
            self.stop.wait(0.2)

    def _shutdown(self) -> None:
        if self.client:
            self.client.close()
        stats = self.outbox.stats()
        log.info("stopped: %s; outbox %s", self.counters, stats)
        self.outbox.close()
        self.events.close()

    # -- edge side -----------------------------------------------------------------------------------------------
    def handle_chunk(self, chunk: AudioChunk) -> None:
        result = self.transcriber.transcribe(chunk.samples)
        now = time.monotonic()
        for seg in result.segments:
            self._handle_segment(chunk, seg, now)
        self._heartbeat()

    def segment_id(self, chunk: AudioChunk, seg: Segment) -> str:
        return f"{self.config.device_id}-{chunk.key}-{round((chunk.offset_s + seg.start) * 1000)}"

    def _handle_segment(self, chunk: AudioChunk, seg: Segment, now: float) -> None:
        seg_id = self.segment_id(chunk, seg)
        duration = max(0.0, max(seg.end, seg.audio_end) - min(seg.start, seg.audio_start or seg.start))
        self.budget.observe(now, duration)
        self.counters["segments"] += 1
        escalate = seg.escalate and self.client is not None
        over_budget = escalate and not self.budget.try_spend(now, duration)
        if over_budget:
            escalate = False
            self.counters["over_budget"] += 1
        if escalate:
            request = self._request(chunk, seg, seg_id)
            self.outbox.put(seg_id, request.SerializeToString(), duration)
            self.counters["escalated"] += 1
            self._wake.set()
        event: dict[str, Any] = {
            "type": "segment", "segment_id": seg_id,
            "start": round(chunk.offset_s + seg.start, 3), "end": round(chunk.offset_s + seg.end, 3),
            "text": seg.text, "source": "edge", "final": not escalate, "confidence": round(seg.confidence, 4),
            "ts": round(time.time(), 3),
        }
        if over_budget:
            event["budget_exceeded"] = True
        self.events.emit(event)

    def _request(self, chunk: AudioChunk, seg: Segment, seg_id: str) -> Any:
        pb = self._pb
        start, end = (seg.audio_start, seg.audio_end) if seg.audio_end > seg.audio_start else (seg.start, seg.end)
        lo = max(0, int((start - SEGMENT_PAD_S) * audio.SAMPLE_RATE))
        hi = min(chunk.samples.size, int((end + SEGMENT_PAD_S) * audio.SAMPLE_RATE))
        enc = {WireEncoding.PCM16: pb.Audio.PCM16, WireEncoding.FLAC: pb.Audio.FLAC, WireEncoding.OPUS: pb.Audio.OPUS}
        lang = language_hint(seg.confidence, self.config.policy)
        edge = pb.EdgeHypothesis(
            text=seg.text, avg_logprob=seg.avg_logprob, no_speech_prob=seg.no_speech_prob,
            compression_ratio=seg.compression_ratio, min_token_prob=seg.min_token_prob,
            mean_entropy=seg.mean_entropy, confidence=seg.confidence,
        )
        return pb.TranscribeRequest(
            segment_id=seg_id, device_id=self.config.device_id,
            audio=pb.Audio(encoding=enc[self.config.wire], sample_rate=audio.SAMPLE_RATE,
                           data=encode(chunk.samples[lo:hi], self.config.wire)),
            language=lang, edge=edge, prompt=self.config.edge.initial_prompt or "",
            segment_start=chunk.offset_s + lo / audio.SAMPLE_RATE,
        )

    def _heartbeat(self) -> None:
        if self.config.heartbeat_file:
            self.config.heartbeat_file.parent.mkdir(parents=True, exist_ok=True)
            self.config.heartbeat_file.touch()

    # -- cloud side ----------------------------------------------------------------------------------------------
    def _emit_recorded_answers(self) -> None:
        for seg_id, payload in self.outbox.unemitted():
            self._emit_revision(seg_id, self._pb.TranscribeResponse.FromString(payload))

    def _emit_revision(self, seg_id: str, resp: Any) -> None:
        self.events.emit({
            "type": "revision", "segment_id": seg_id, "text": resp.text.strip(), "source": "cloud",
            "language": resp.language, "final": True, "ts": round(time.time(), 3),
        })
        self.outbox.mark_emitted(seg_id)
        self.counters["revisions"] += 1

    def _send_loop(self) -> None:
        assert self.client is not None
        failing = False
        while not self._sender_stop.is_set():
            self._heartbeat()
            if not self.breaker.allow():
                self._wake.wait(max(0.05, self.breaker.retry_in()))
                self._wake.clear()
                continue
            entries = self.outbox.due(limit=8)
            if not entries:
                nxt = self.outbox.next_due_in()
                self._wake.wait(1.0 if nxt is None else min(1.0, max(0.05, nxt)))
                self._wake.clear()
                continue
            for entry in entries:
                if self._sender_stop.is_set():
                    return
                request = self._pb.TranscribeRequest.FromString(entry.payload)
                try:
                    resp = self.client.transcribe(request)
                except CloudError as err:
                    self.breaker.record_failure()
                    if not failing:
                        log.warning("escalation to %s failed (%s); %d pending, kept in the outbox, retrying with "
                                    "backoff", self.config.cloud.target if self.config.cloud else "?", err,
                                    self.outbox.stats()["pending"])
                    failing = True
                    if err.retryable or err.code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                        if err.code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                            log.error("the cloud refused this device's token (%s): check --token-file", err.code)
                        self.outbox.retry_later(entry.segment_id, self.config.backoff.delay(entry.attempts))
                    else:
                        self.outbox.give_up(entry.segment_id, str(err))
                        self.events.emit({"type": "escalation_failed", "segment_id": entry.segment_id,
                                          "reason": str(err), "ts": round(time.time(), 3)})
                    break
                if failing:
                    log.info("cloud reachable again; draining the outbox")
                failing = False
                self.breaker.record_success()
                if self.outbox.record_answer(entry.segment_id, resp.SerializeToString()):
                    self._emit_revision(entry.segment_id, resp)
