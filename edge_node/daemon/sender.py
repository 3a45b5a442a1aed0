"""The escalation sender: drains the encrypted outbox over gRPC and emits the cloud's answers as `revision` events.

Up to `in_flight` requests go out at once (the cloud batches requests that arrive together), oldest first. A failed
call is retried with backoff (jitter) behind a circuit breaker; one the cloud will never take is given up, logged
and reported. An answer is recorded in the same transaction that removes its request, then emitted; answers
recorded but not yet emitted before a crash are emitted at the next start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor

from edge_node.adapters.cloud_client import CloudError, EscalationClient
from edge_node.daemon.events import EventWriter
from edge_node.daemon.outbox import Outbox
from edge_node.daemon.retry import BackoffPolicy, BreakerPolicy, CircuitBreaker
from proto.asr.v1 import asr_pb2

log = logging.getLogger(__name__)

_REFUSED = ("UNAUTHENTICATED", "PERMISSION_DENIED")


class EscalationSender:
    """Owns the sender thread; `wake()` after putting a request in the outbox, `stop()` at shutdown."""

    def __init__(
        self,
        client: EscalationClient | None,
        outbox: Outbox,
        events: EventWriter,
        counters: MutableMapping[str, int],
        *,
        in_flight: int,
        backoff: BackoffPolicy,
        breaker: BreakerPolicy,
        heartbeat: Callable[[], None],
        target: str = "?",
    ) -> None:
        self.client = client  # None: edge only, nothing is sent (recorded answers are still emitted)
        self.outbox = outbox
        self.events = events
        self.counters = counters
        self.in_flight = in_flight
        self.backoff = backoff
        self.breaker = CircuitBreaker(breaker)
        self._heartbeat = heartbeat
        self._target = target
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._loop, name="escalation-sender", daemon=True)

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.client is not None:
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    # -- revisions -----------------------------------------------------------------------------------------------
    def emit_recorded_answers(self) -> None:
        """Answers recorded before a crash but never emitted."""
        for seg_id, payload in self.outbox.unemitted():
            self._emit_revision(seg_id, asr_pb2.TranscribeResponse.FromString(payload))

    def _emit_revision(self, seg_id: str, resp: asr_pb2.TranscribeResponse) -> None:
        self.events.emit({
            "type": "revision", "segment_id": seg_id, "text": resp.text.strip(), "source": "cloud",
            "language": resp.language, "final": True, "ts": round(time.time(), 3),
        })
        self.outbox.mark_emitted(seg_id)
        self.counters["revisions"] += 1

    # -- the loop ------------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        """Drain the outbox: up to `in_flight` requests at once (the cloud batches them), oldest first."""
        assert self.client is not None
        client = self.client
        self._failing = False
        with ThreadPoolExecutor(max_workers=self.in_flight, thread_name_prefix="escalate") as pool:
            while not self._stop.is_set():
                self._heartbeat()
                if not self.breaker.allow():
                    self._wake.wait(max(0.05, self.breaker.retry_in()))
                    self._wake.clear()
                    continue
                entries = self.outbox.due(limit=self.in_flight)
                if not entries:
                    nxt = self.outbox.next_due_in()
                    self._wake.wait(1.0 if nxt is None else min(1.0, max(0.05, nxt)))
                    self._wake.clear()
                    continue
                requests = [asr_pb2.TranscribeRequest.FromString(e.payload) for e in entries]
                futures = [pool.submit(_call, client, r) for r in requests]
                for entry, future in zip(entries, futures, strict=True):
                    outcome = future.result()
                    if isinstance(outcome, CloudError):
                        self._on_failure(entry.segment_id, entry.attempts, outcome)
                    else:
                        self._on_answer(entry.segment_id, outcome)

    def _on_answer(self, seg_id: str, resp: asr_pb2.TranscribeResponse) -> None:
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
                        self._target, err, self.outbox.stats()["pending"])
        self._failing = True
        if err.retryable or err.code in _REFUSED:
            if err.code in _REFUSED:
                log.error("the cloud refused this device's token (%s): check --token-file", err.code)
            self.outbox.retry_later(seg_id, self.backoff.delay(attempts))
        else:  # the cloud will never take this request (e.g. INVALID_ARGUMENT): dropped, logged, counted
            self.outbox.give_up(seg_id, str(err))
            self.events.emit({"type": "escalation_failed", "segment_id": seg_id, "reason": str(err),
                              "ts": round(time.time(), 3)})


def _call(client: EscalationClient, request: asr_pb2.TranscribeRequest) -> asr_pb2.TranscribeResponse | CloudError:
    try:
        return client.transcribe(request)
    except CloudError as err:
        return err
