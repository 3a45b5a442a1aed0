"""`edge-node run`: transcribe audio as it comes, answer at once, escalate what the edge doubts, never lose it.

Flow per segment: edge text -> `segment` event at once -> if the policy escalates and the budget allows, the
request is written to the encrypted outbox *before* the event goes out -> a sender thread drains the outbox over
gRPC (backoff with jitter, circuit breaker) -> the cloud's answer is recorded in the same transaction that removes
the request -> `revision` event. A crash anywhere replays from the outbox; the cloud dedupes by segment_id.

The parts: `DaemonConfig` (config.py), the sender (sender.py), live parameters and model swaps (hotswap.py); this
module reads the source, decides per segment (edge_node/core/escalation_policy.py `decide`) and wires the rest.

What the user must fix is refused at start-up as a UserError (one line, exit 2): a state directory that cannot be
written, an outbox key that is unreadable, malformed or not the outbox's own, an outbox that cannot be created (a
full disk). What fails later costs an escalation, never the edge's text: a segment whose request cannot be written
to the outbox is still emitted (final, with an `escalation_failed` event), logged and counted.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from edge_node.adapters.cloud_client import EscalationClient, audio_message
from edge_node.adapters.model_update import ModelUpdater, UpdaterConfig
from edge_node.adapters.mqtt_agent import DeviceAgent
from edge_node.core.escalation_policy import Decision, EscalationBudget, decide
from edge_node.daemon.config import DaemonConfig
from edge_node.daemon.events import EventWriter
from edge_node.daemon.hotswap import HotSwap
from edge_node.daemon.live_params import Tunables
from edge_node.daemon.metrics import EdgeMetrics, EdgeSnapshot
from edge_node.daemon.outbox import Outbox, OutboxError, create_key, load_key
from edge_node.daemon.sender import EscalationSender
from edge_node.daemon.sources import AudioChunk, ProcessedLog, read_file, read_pcm16_stream, watch_directory
from edge_node.engine.transcriber import EdgeTranscriber, Segment
from proto.asr.v1 import asr_pb2
from shared import audio
from shared.errors import UserError
from shared.manifest import read_manifest
from shared.metrics_http import Exporter
from shared.signing import load_public_key

log = logging.getLogger(__name__)

SEGMENT_PAD_S = 0.1  # context on each side of a segment sent to the cloud
STATE_PROBE_BYTES = 4096  # written and fsynced once at start-up: a state dir that cannot take this is refused


class EdgeDaemon:
    def __init__(self, config: DaemonConfig, transcriber: EdgeTranscriber | None = None) -> None:
        self.config = config
        self.stop = threading.Event()
        _prepare_state_dir(config.state_dir)
        self.outbox = _open_outbox(config)
        self.events = EventWriter(config.events)
        # Live parameters and model swaps arrive on the MQTT agent's thread and are taken up between segments.
        self.hotswap = HotSwap(Tunables(config.edge, config.policy), transcriber or EdgeTranscriber(config.edge))
        self.budget = EscalationBudget(config.policy)
        self.client = EscalationClient(config.cloud) if config.cloud else None
        self.processed = ProcessedLog(config.state_dir / "processed.txt")
        # Reported in the "stopped" log line and in the MQTT state (`fleetctl status`). quarantined: escalations
        # whose outbox row could not be read; outbox_write_failed: escalations that could not be queued (a full
        # disk); sender_errors: sender rounds that failed for any other reason and were retried.
        self.counters = {"segments": 0, "escalated": 0, "over_budget": 0, "revisions": 0, "quarantined": 0,
                         "outbox_write_failed": 0, "sender_errors": 0}
        self.sender = EscalationSender(
            self.client, self.outbox, self.events, self.counters, in_flight=config.in_flight,
            backoff=config.backoff, breaker=config.breaker, heartbeat=self._heartbeat,
            target=config.cloud.target if config.cloud else "?",
        )
        self.agent: DeviceAgent | None = None
        self.metrics = EdgeMetrics.create(self._metrics_snapshot)
        self._model_seen: tuple[Path, tuple[str, str] | None] | None = None  # manifest read once per model dir

    # -- main loop -----------------------------------------------------------------------------------------------
    def run(self) -> int:
        exporter: Exporter | None = None
        if self.config.metrics_listen:  # first: a port that is taken is refused before any work
            exporter = self.metrics.serve(self.config.metrics_listen)
        self._install_signals()
        try:
            self.sender.emit_recorded_answers()
        except OutboxError as exc:  # they stay recorded: emitted at the next start
            log.error("answers recorded before the last stop cannot be emitted now: %s", exc)
        self._start_agent()
        self.sender.start()
        drained = True
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
                drained = self._wait_drained()
        finally:
            self.sender.stop(timeout_s=10)
            self._shutdown()
            if exporter is not None:
                exporter.close()
        return 0 if drained else 1

    def _chunks(self, kind: str) -> Iterator[AudioChunk]:
        if kind == "stdin":
            yield from read_pcm16_stream(sys.stdin.buffer, self.stop, self.config.stream_chunk_s,
                                         stream_id=stdin_stream_id())
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

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("%s: finishing the current chunk, then stopping", signal.Signals(signum).name)
            self.stop.set()
            self.sender.wake()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def _wait_drained(self) -> bool:
        """Until the outbox is empty or a signal stops us. False if the sender is gone (it should never die; if
        it does, waiting would be for ever): the escalations stay on disk for the next start."""
        while not self.stop.is_set():
            if not self.sender.alive:
                log.error("the escalation sender stopped unexpectedly; pending escalations stay in the outbox")
                return False
            try:
                if self.outbox.stats()["pending"] == 0:
                    return True
            except OutboxError as exc:  # a passing I/O error: ask again
                log.warning("%s", exc)
            self.stop.wait(0.2)
        return True

    def _shutdown(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        if self.client:
            self.client.close()
        try:
            stats: dict[str, int] | str = self.outbox.stats()
        except OutboxError as exc:
            stats = str(exc)
        log.info("stopped: %s; outbox %s", self.counters, stats)
        self.outbox.close()
        self.events.close()

    # -- edge side -----------------------------------------------------------------------------------------------
    def handle_chunk(self, chunk: AudioChunk) -> None:
        self._take_updates()
        started = time.perf_counter()
        result = self.hotswap.transcriber.transcribe(chunk.samples)
        self.metrics.chunk_done(chunk.samples.size / audio.SAMPLE_RATE, time.perf_counter() - started)
        now = time.monotonic()
        for seg in result.segments:
            self._handle_segment(chunk, seg, now)
        self._heartbeat()
        if self.agent is not None:
            self.agent.request_state()  # fresh counters for `fleetctl status`

    def segment_id(self, chunk: AudioChunk, seg: Segment) -> str:
        # The cloud keys results by device and accepts only ids that start with "<device_id>-" (at most 128
        # characters): the chunk key is a content hash or "stdin<epoch ms>-<offset>", so ids stay short and unique.
        return f"{self.config.device_id}-{chunk.key}-{round((chunk.offset_s + seg.start) * 1000)}"

    def _take_updates(self, policy_only: bool = False) -> None:
        self.hotswap.take_updates(policy_only)
        self.budget.policy = self.hotswap.tunables.policy

    def _handle_segment(self, chunk: AudioChunk, seg: Segment, now: float) -> None:
        self._take_updates(policy_only=True)
        seg_id = self.segment_id(chunk, seg)
        # Decided again under the parameters in force now, so a threshold pushed mid-file governs the next segment.
        tunables = self.hotswap.tunables
        decision = decide(seg.features(), tunables.edge.confidence, tunables.policy)
        span_start, span_end = _audio_span(seg)
        duration = max(0.0, span_end - span_start)
        self.budget.observe(now, duration)
        self.counters["segments"] += 1
        escalate = self.client is not None and decision.escalate
        over_budget = escalate and not self.budget.try_spend(now, duration)
        if over_budget:
            escalate = False
            self.counters["over_budget"] += 1
        failure = None
        if escalate:
            failure = self._escalate(chunk, seg, seg_id, decision, duration)
            escalate = failure is None
        event: dict[str, Any] = {
            "type": "segment", "segment_id": seg_id,
            "start": round(chunk.offset_s + seg.start, 3), "end": round(chunk.offset_s + seg.end, 3),
            "text": seg.text, "source": "edge", "final": not escalate, "confidence": round(decision.confidence, 4),
            "ts": round(time.time(), 3),
        }
        if over_budget:
            event["budget_exceeded"] = True
        self.events.emit(event)
        if failure is not None:
            self.events.emit({"type": "escalation_failed", "segment_id": seg_id, "reason": failure,
                              "ts": round(time.time(), 3)})

    def _escalate(self, chunk: AudioChunk, seg: Segment, seg_id: str, decision: Decision,
                  duration: float) -> str | None:
        """Queue the segment's request in the outbox; None once it is there, else why it is not. The edge text
        goes out either way: the transcript is never lost to a failed escalation (a full disk)."""
        request = self._request(chunk, seg, seg_id, decision)
        try:
            self.outbox.put(seg_id, request.SerializeToString(), duration)
        except OutboxError as exc:
            self.counters["outbox_write_failed"] += 1
            log.error("escalation %s not queued (%s): its edge text stands", seg_id, exc)
            return str(exc)
        self.counters["escalated"] += 1
        self.sender.wake()
        return None

    def _request(self, chunk: AudioChunk, seg: Segment, seg_id: str, decision: Decision) -> asr_pb2.TranscribeRequest:
        start, end = _audio_span(seg)
        lo = max(0, int((start - SEGMENT_PAD_S) * audio.SAMPLE_RATE))
        hi = min(chunk.samples.size, int((end + SEGMENT_PAD_S) * audio.SAMPLE_RATE))
        edge = asr_pb2.EdgeHypothesis(
            text=seg.text, avg_logprob=seg.avg_logprob, no_speech_prob=seg.no_speech_prob,
            compression_ratio=seg.compression_ratio, min_token_prob=seg.min_token_prob,
            mean_entropy=seg.mean_entropy, confidence=decision.confidence,
        )
        return asr_pb2.TranscribeRequest(
            segment_id=seg_id, device_id=self.config.device_id,
            audio=audio_message(chunk.samples[lo:hi], self.config.wire),
            language=decision.language, edge=edge, prompt=self.config.edge.initial_prompt or "",
            segment_start=chunk.offset_s + lo / audio.SAMPLE_RATE,
        )

    # -- control plane -------------------------------------------------------------------------------------------
    def _start_agent(self) -> None:
        """The MQTT agent and the model updater call `self.hotswap` on their own threads."""
        if self.config.agent is None:
            return
        updater = None
        if self.config.operator_pubkey and self.config.cloud:
            updater = ModelUpdater(
                UpdaterConfig(models_dir=self.config.state_dir / "models", state_dir=self.config.state_dir,
                              grpc_target=self.config.cloud.target),
                self.hotswap, load_public_key(self.config.operator_pubkey), cloud=self.config.cloud,
            )
        self.agent = DeviceAgent(self.config.agent, self.hotswap, updater, counters=self._state_counters,
                                 boot_model=self._boot_model())
        self.agent.start()

    def _boot_model(self) -> tuple[str, str] | None:
        return _manifest_model(self.config.edge.model_dir)

    def _state_counters(self) -> dict[str, float]:
        seen = max(1, self.counters["segments"])
        return {**{k: float(v) for k, v in self.counters.items()},
                "escalation_rate": round(self.counters["escalated"] / seen, 4)}

    def _metrics_snapshot(self) -> EdgeSnapshot:
        """Called on the metrics server's thread at each scrape: reads, never changes, the daemon's state."""
        try:
            outbox: dict[str, int] | None = self.outbox.stats()
        except OutboxError:
            outbox = None
        model_dir = self.hotswap.transcriber.config.model_dir
        if self._model_seen is None or self._model_seen[0] != model_dir:
            self._model_seen = (model_dir, _manifest_model(model_dir))
        agent = self.agent
        return EdgeSnapshot(device=self.config.device_id, counters=dict(self.counters), outbox=outbox,
                            model=self._model_seen[1], config_version=agent.rec.config_version if agent else 0)

    def _heartbeat(self) -> None:
        if self.config.heartbeat_file:
            self.config.heartbeat_file.parent.mkdir(parents=True, exist_ok=True)
            self.config.heartbeat_file.touch()


def stdin_stream_id() -> str:
    """Unique per run; the segment id adds the device id in front, so it is not repeated here (ids stay short)."""
    return f"stdin{int(time.time() * 1000)}"


def _prepare_state_dir(path: Path) -> None:
    """Make the state directory and prove it takes a small fsynced write, so an unwritable one (read-only, a
    regular file on its path, a full disk) is one line at start-up, not a traceback from deep in SQLite."""
    probe = path / f".write-probe-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, bytes(STATE_PROBE_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        raise UserError(f"--state-dir {path}: cannot write there ({exc.strerror or exc}); the outbox and "
                        "progress are kept there, so it must be a writable directory with free space") from None


def _open_outbox(config: DaemonConfig) -> Outbox:
    """The encrypted outbox; its key is made on first start unless the operator provides one."""
    key_file = config.outbox_key_file or config.state_dir / "outbox.key"
    if config.outbox_key_file is None and not key_file.exists():
        try:
            create_key(key_file)
        except OSError as exc:
            raise UserError(f"cannot create the outbox key {key_file}: {exc.strerror or exc}") from None
        log.info("created outbox key %s", key_file)
    name = f"--outbox-key-file {key_file}" if config.outbox_key_file else f"the outbox key {key_file}"
    return Outbox(config.state_dir / "outbox.db", load_key(key_file), config.outbox_limits, key_name=name)


def _manifest_model(model_dir: Path) -> tuple[str, str] | None:
    try:
        manifest = read_manifest(model_dir)
    except (OSError, UserError, ValueError):
        return None  # an unsigned lab model directory: nothing to report
    return manifest.name, manifest.version


def _audio_span(seg: Segment) -> tuple[float, float]:
    """The audio a segment was decoded from (its VAD window), which is what escalation sends and budgets."""
    return (seg.audio_start, seg.audio_end) if seg.audio_end > seg.audio_start else (seg.start, seg.end)
