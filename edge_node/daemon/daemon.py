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
from typing import TYPE_CHECKING, Any

from edge_node.adapters.cloud_client import CloudClientConfig, CloudError, EscalationClient, audio_message
from edge_node.core import confidence as conf
from edge_node.core.escalation_policy import EscalationBudget, EscalationPolicy, language_hint, wants_escalation
from edge_node.core.live_params import Tunables, apply_params
from edge_node.daemon.events import EventWriter
from edge_node.daemon.outbox import Outbox, OutboxLimits, create_key, load_key
from edge_node.daemon.retry import BackoffPolicy, BreakerPolicy, CircuitBreaker
from edge_node.daemon.sources import AudioChunk, ProcessedLog, read_file, read_pcm16_stream, watch_directory
from edge_node.engine.config import EdgeConfig
from edge_node.engine.transcriber import EdgeTranscriber, Segment
from shared import audio
from shared.wire_audio import WireEncoding

if TYPE_CHECKING:
    from edge_node.adapters.mqtt_agent import AgentConfig
    from shared.fleet_schema import ConfigParams

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
    in_flight: int = 4  # concurrent escalation calls: the cloud batches requests that arrive together
    agent: AgentConfig | None = None  # MQTT control plane: live parameters, model rollouts, state
    operator_pubkey: Path | None = None  # verifies model artifacts pushed over MQTT

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
        # Live parameters and model swaps arrive on the MQTT agent's thread and are taken up between segments.
        self._base = Tunables(config.edge, config.policy)
        self.tunables = self._base
        self._lock = threading.Lock()
        self._pending_params: ConfigParams | None = None
        self._candidate: EdgeTranscriber | None = None
        self._swap_to: EdgeTranscriber | None = None
        self.agent: Any = None
        self._failing = False

    # -- main loop -----------------------------------------------------------------------------------------------
    def run(self) -> int:
        self._install_signals()
        self._emit_recorded_answers()
        self._start_agent()
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
        if self.agent is not None:
            self.agent.stop()
        if self.client:
            self.client.close()
        stats = self.outbox.stats()
        log.info("stopped: %s; outbox %s", self.counters, stats)
        self.outbox.close()
        self.events.close()

    # -- edge side -----------------------------------------------------------------------------------------------
    def handle_chunk(self, chunk: AudioChunk) -> None:
        self._take_updates()
        result = self.transcriber.transcribe(chunk.samples)
        now = time.monotonic()
        for seg in result.segments:
            self._handle_segment(chunk, seg, now)
        self._heartbeat()
        if self.agent is not None:
            self.agent.request_state()  # fresh counters for `fleetctl status`

    def segment_id(self, chunk: AudioChunk, seg: Segment) -> str:
        return f"{self.config.device_id}-{chunk.key}-{round((chunk.offset_s + seg.start) * 1000)}"

    def _handle_segment(self, chunk: AudioChunk, seg: Segment, now: float) -> None:
        self._take_updates(policy_only=True)
        seg_id = self.segment_id(chunk, seg)
        # Judged again under the parameters in force now, so a threshold pushed mid-file governs the next segment.
        verdict = conf.judge(conf.SegmentFeatures(seg.avg_logprob, seg.no_speech_prob, seg.compression_ratio,
                                                  seg.min_token_prob, seg.mean_entropy, seg.temperature, 2),
                             self.tunables.edge.confidence)
        span_start, span_end = _audio_span(seg)
        duration = max(0.0, span_end - span_start)
        self.budget.observe(now, duration)
        self.counters["segments"] += 1
        escalate = self.client is not None and wants_escalation(verdict.escalate, seg.avg_logprob,
                                                                 self.tunables.policy)
        over_budget = escalate and not self.budget.try_spend(now, duration)
        if over_budget:
            escalate = False
            self.counters["over_budget"] += 1
        if escalate:
            request = self._request(chunk, seg, seg_id, verdict.confidence)
            self.outbox.put(seg_id, request.SerializeToString(), duration)
            self.counters["escalated"] += 1
            self._wake.set()
        event: dict[str, Any] = {
            "type": "segment", "segment_id": seg_id,
            "start": round(chunk.offset_s + seg.start, 3), "end": round(chunk.offset_s + seg.end, 3),
            "text": seg.text, "source": "edge", "final": not escalate, "confidence": round(verdict.confidence, 4),
            "ts": round(time.time(), 3),
        }
        if over_budget:
            event["budget_exceeded"] = True
        self.events.emit(event)

    def _request(self, chunk: AudioChunk, seg: Segment, seg_id: str, confidence: float) -> Any:
        pb = self._pb
        start, end = _audio_span(seg)
        lo = max(0, int((start - SEGMENT_PAD_S) * audio.SAMPLE_RATE))
        hi = min(chunk.samples.size, int((end + SEGMENT_PAD_S) * audio.SAMPLE_RATE))
        lang = language_hint(confidence, self.tunables.policy)
        edge = pb.EdgeHypothesis(
            text=seg.text, avg_logprob=seg.avg_logprob, no_speech_prob=seg.no_speech_prob,
            compression_ratio=seg.compression_ratio, min_token_prob=seg.min_token_prob,
            mean_entropy=seg.mean_entropy, confidence=confidence,
        )
        return pb.TranscribeRequest(
            segment_id=seg_id, device_id=self.config.device_id,
            audio=audio_message(chunk.samples[lo:hi], self.config.wire),
            language=lang, edge=edge, prompt=self.config.edge.initial_prompt or "",
            segment_start=chunk.offset_s + lo / audio.SAMPLE_RATE,
        )

    # -- control plane (called on the MQTT agent's threads: never block them) --------------------------------------
    def apply_params(self, params: ConfigParams) -> None:
        with self._lock:
            self._pending_params = params

    def load_candidate(self, directory: Path) -> None:
        from dataclasses import replace

        candidate = EdgeTranscriber(replace(self.tunables.edge, model_dir=directory))
        with self._lock:
            self._candidate = candidate

    def self_test(self) -> None:
        """The candidate must decode a clip end to end: 2 s of a tone burst in silence (no crash, sane output)."""
        import numpy as np

        with self._lock:
            candidate = self._candidate
        if candidate is None:
            raise RuntimeError("no candidate model loaded")
        t = np.arange(2 * audio.SAMPLE_RATE) / audio.SAMPLE_RATE
        clip = np.concatenate([np.zeros(audio.SAMPLE_RATE, np.float32),
                               (0.2 * np.sin(2 * np.pi * 440 * t) * (t < 0.5)).astype(np.float32)])
        result = candidate.transcribe(clip)
        if result.duration <= 0 or any(not (0.0 <= s.confidence <= 1.0) for s in result.segments):
            raise RuntimeError("candidate model produced an invalid result on the self-test clip")

    def swap(self) -> None:
        with self._lock:
            self._swap_to, self._candidate = self._candidate, None

    def discard_candidate(self) -> None:
        with self._lock:
            self._candidate = None

    def _take_updates(self, policy_only: bool = False) -> None:
        with self._lock:
            params, swap = self._pending_params, self._swap_to
            if not policy_only:
                self._pending_params, self._swap_to = None, None
        if params is not None:
            new = apply_params(params, self._base)
            if policy_only:
                self.tunables = Tunables(replace_confidence(self.tunables.edge, new.edge), new.policy)
                self.budget.policy = new.policy
                return
            reload = new.edge.threads != self.tunables.edge.threads
            self.tunables = new
            self.budget.policy = new.policy
            if reload:
                from dataclasses import replace

                self.transcriber = EdgeTranscriber(replace(new.edge, model_dir=self.transcriber.config.model_dir))
            else:
                self.transcriber = self.transcriber.with_config(new.edge)
            log.info("applied live parameters: %s", params.model_dump(exclude_none=True))
        if swap is not None and not policy_only:
            self.transcriber = swap.with_config(self.tunables.edge)
            log.info("now serving model %s", swap.config.model_dir)

    def _start_agent(self) -> None:
        if self.config.agent is None:
            return
        from edge_node.adapters.model_update import ModelUpdater, UpdaterConfig
        from edge_node.adapters.mqtt_agent import DeviceAgent
        from shared.signing import load_public_key

        updater = None
        if self.config.operator_pubkey and self.config.cloud:
            updater = ModelUpdater(
                UpdaterConfig(models_dir=self.config.state_dir / "models", state_dir=self.config.state_dir,
                              grpc_target=self.config.cloud.target),
                self, load_public_key(self.config.operator_pubkey),
            )
        self.agent = DeviceAgent(self.config.agent, self, updater, counters=self._state_counters)
        self.agent.start()

    def _state_counters(self) -> dict[str, float]:
        seen = max(1, self.counters["segments"])
        return {**{k: float(v) for k, v in self.counters.items()},
                "escalation_rate": round(self.counters["escalated"] / seen, 4)}

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
        """Drain the outbox: up to `in_flight` requests at once (the cloud batches them), oldest first."""
        from concurrent.futures import ThreadPoolExecutor

        assert self.client is not None
        client = self.client
        self._failing = False
        with ThreadPoolExecutor(max_workers=self.config.in_flight, thread_name_prefix="escalate") as pool:
            while not self._sender_stop.is_set():
                self._heartbeat()
                if not self.breaker.allow():
                    self._wake.wait(max(0.05, self.breaker.retry_in()))
                    self._wake.clear()
                    continue
                entries = self.outbox.due(limit=self.config.in_flight)
                if not entries:
                    nxt = self.outbox.next_due_in()
                    self._wake.wait(1.0 if nxt is None else min(1.0, max(0.05, nxt)))
                    self._wake.clear()
                    continue
                requests = [self._pb.TranscribeRequest.FromString(e.payload) for e in entries]
                futures = [pool.submit(_call, client, r) for r in requests]
                for entry, future in zip(entries, futures, strict=True):
                    outcome = future.result()
                    if isinstance(outcome, CloudError):
                        self._on_failure(entry.segment_id, entry.attempts, outcome)
                    else:
                        self._on_answer(entry.segment_id, outcome)

    def _on_answer(self, seg_id: str, resp: Any) -> None:
        if self._failing:
            log.info("cloud reachable again; draining the outbox")
        self._failing = False
        self.breaker.record_success()
        if self.outbox.record_answer(seg_id, resp.SerializeToString()):
            self._emit_revision(seg_id, resp)

    def _on_failure(self, seg_id: str, attempts: int, err: CloudError) -> None:
        self.breaker.record_failure()
        if not self._failing:
            log.warning("escalation to %s failed (%s); %d pending, kept in the outbox, retrying with backoff",
                        self.config.cloud.target if self.config.cloud else "?", err, self.outbox.stats()["pending"])
        self._failing = True
        if err.retryable or err.code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            if err.code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                log.error("the cloud refused this device's token (%s): check --token-file", err.code)
            self.outbox.retry_later(seg_id, self.config.backoff.delay(attempts))
        else:  # the cloud will never take this request (e.g. INVALID_ARGUMENT): dropped, logged, counted
            self.outbox.give_up(seg_id, str(err))
            self.events.emit({"type": "escalation_failed", "segment_id": seg_id, "reason": str(err),
                              "ts": round(time.time(), 3)})


def _audio_span(seg: Segment) -> tuple[float, float]:
    """The audio a segment was decoded from (its VAD window), which is what escalation sends and budgets."""
    return (seg.audio_start, seg.audio_end) if seg.audio_end > seg.audio_start else (seg.start, seg.end)


def _call(client: EscalationClient, request: Any) -> Any:
    try:
        return client.transcribe(request)
    except CloudError as err:
        return err


def replace_confidence(edge: EdgeConfig, new: EdgeConfig) -> EdgeConfig:
    """Only the confidence thresholds of `new`: what can change between two segments of one decoded chunk."""
    from dataclasses import replace

    return replace(edge, confidence=new.confidence)
