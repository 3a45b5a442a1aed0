"""The Wyoming server's engine: the edge model, one decode at a time, and the escalation of doubtful utterances.

An utterance whose segments `decide()` wants escalated (and the budget allows) goes to the cloud whole (FLAC);
its text is the cloud's when the answer comes within `cloud_deadline_s`, else the edge's. A call the deadline
gave up on stays open `late_answer_s` longer in its own thread, and its answer (or failure) is logged with the
segment id, which the transcript's context carries too.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_node.core.escalation_policy import EscalationBudget, decide
from shared import audio

if TYPE_CHECKING:
    from edge_node.adapters.cloud_client import EscalationClient
    from edge_node.daemon.wyoming_server import WyomingConfig
    from edge_node.engine.transcriber import EdgeTranscriber, FileResult

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """One utterance's answer: the final text, where it came from, and the escalation's segment id (if any)."""

    text: str
    source: str  # "edge" or "cloud"
    language: str
    result: FileResult
    segment_id: str | None = None


class _Call:
    """One escalation in flight. Its pool future's callback (a pool thread) frees the call's slot and, when the
    deadline passed first, logs the answer: a late cloud text is never dropped silently."""

    def __init__(self, segment_id: str, slots: threading.BoundedSemaphore) -> None:
        self.segment_id, self.slots = segment_id, slots
        self.sent = time.monotonic()
        self._lock = threading.Lock()
        self._late = False  # the event loop gave up waiting
        self._done: Future[Any] | None = None

    def settled(self, fut: Future[Any]) -> None:
        self.slots.release()
        with self._lock:
            self._done = fut
            late = self._late
        if late:
            self._log_late(fut)

    def mark_late(self) -> None:
        with self._lock:
            self._late = True
            done = self._done
        if done is not None:  # it settled between the timeout and now
            self._log_late(done)

    def _log_late(self, fut: Future[Any]) -> None:
        waited = time.monotonic() - self.sent
        if fut.cancelled():
            log.warning("late escalation %s: cancelled (shutting down)", self.segment_id)
        elif (exc := fut.exception()) is not None:
            log.warning("late escalation %s: failed after %.2f s: %s", self.segment_id, waited, exc)
        else:
            log.warning("late escalation %s: cloud answered after %.2f s, past the deadline (the edge text was "
                        "returned): %s", self.segment_id, waited, str(fut.result().text).strip())


class Engine:
    """The loaded model, the escalation client and budget, shared by all connections (one decode at a time)."""

    def __init__(self, cfg: WyomingConfig, transcriber: EdgeTranscriber, client: EscalationClient | None) -> None:
        self.cfg = cfg
        self.transcriber = transcriber
        self.client = client
        self.budget = EscalationBudget(cfg.policy)
        self.lock = asyncio.Lock()
        # Cloud calls block a thread each (the sync gRPC stub) for up to deadline + late_answer_s: their own pool,
        # so slow or late calls never hold up edge decodes, and a bounded number of them.
        self.cloud_pool = ThreadPoolExecutor(max_workers=cfg.max_cloud_calls, thread_name_prefix="wyoming-cloud")
        self.cloud_slots = threading.BoundedSemaphore(cfg.max_cloud_calls)
        self._ids = itertools.count()
        self._boot = int(time.time() * 1000)

    async def transcribe(self, samples: np.ndarray, hotwords: tuple[str, ...]) -> Outcome:
        loop = asyncio.get_running_loop()
        async with self.lock:
            result = await loop.run_in_executor(None, self._edge, samples, hotwords)
        out = Outcome(result.text, "edge", self.cfg.policy.device_language, result)
        if self.client is not None and result.segments:
            await self._escalate(samples, out)
        return out

    def _edge(self, samples: np.ndarray, hotwords: tuple[str, ...]) -> FileResult:
        return self.transcriber.transcribe(samples, hotwords=hotwords)

    def _request(self, samples: np.ndarray, result: FileResult, seg_id: str, language: str,
                 confidence: float) -> Any:
        from edge_node.adapters.cloud_client import audio_message
        from proto.asr.v1 import asr_pb2
        from shared.wire_audio import WireEncoding

        return asr_pb2.TranscribeRequest(
            segment_id=seg_id, device_id=self.cfg.device_id, audio=audio_message(samples, WireEncoding.FLAC),
            language=language, edge=asr_pb2.EdgeHypothesis(text=result.text, confidence=confidence),
        )

    async def _escalate(self, samples: np.ndarray, out: Outcome) -> None:
        """Put the cloud's text for the whole utterance into `out` when any segment wants it, the budget allows
        and the answer comes within the deadline."""
        from edge_node.adapters.cloud_client import CloudError

        cfg, client = self.cfg, self.client
        assert client is not None
        decisions = [decide(s.features(), self.transcriber.config.confidence, cfg.policy) for s in out.result.segments]
        now, duration = time.monotonic(), samples.size / audio.SAMPLE_RATE
        self.budget.observe(now, duration)
        if not any(d.escalate for d in decisions) or not self.budget.try_spend(now, duration):
            return
        worst = min(decisions, key=lambda d: d.confidence)
        # Unique per process and across restarts: the cloud deduplicates by segment id, and two utterances in
        # the same millisecond (two satellites) must not share one answer.
        seg_id = f"{cfg.device_id}-wy{self._boot}-{next(self._ids)}"
        if not self.cloud_slots.acquire(blocking=False):
            log.warning("escalation %s: %d cloud calls already in flight; the edge text stands", seg_id,
                        cfg.max_cloud_calls)
            return
        out.segment_id = seg_id
        call = _Call(seg_id, self.cloud_slots)
        log.info("escalation %s: confidence %.2f, %.2f s of audio, language %s", seg_id, worst.confidence,
                 duration, worst.language)
        request = self._request(samples, out.result, seg_id, worst.language, worst.confidence)
        fut = self.cloud_pool.submit(client.transcribe, request, cfg.cloud_deadline_s + cfg.late_answer_s)
        fut.add_done_callback(call.settled)
        try:
            # On timeout wait_for cancels the wrapper only: a running call goes on in its thread.
            resp = await asyncio.wait_for(asyncio.wrap_future(fut), cfg.cloud_deadline_s)
        except TimeoutError:
            log.warning("escalation %s: no cloud answer within %g s (--cloud-deadline-s); the edge text stands",
                        seg_id, cfg.cloud_deadline_s)
            call.mark_late()  # its answer is logged when (if) it comes
            return
        except CloudError as exc:
            # Not queued in the outbox: the satellite waits for this answer now; a late one helps no one.
            log.warning("escalation %s: %s; the edge text stands", seg_id, exc)
            return
        out.text, out.source = str(resp.text).strip(), "cloud"
        out.language = str(resp.language) or out.language
        log.info("escalation %s: cloud answered in %.2f s", seg_id, time.monotonic() - call.sent)

    def close(self) -> None:
        self.cloud_pool.shutdown(wait=False, cancel_futures=True)
