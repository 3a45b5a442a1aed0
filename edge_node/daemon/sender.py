"""The escalation sender: drains the encrypted outbox over gRPC and emits the cloud's answers as `revision` events.

Up to `in_flight` requests go out at once (the cloud batches requests that arrive together), oldest first. A failed
call is retried with backoff (jitter) behind a circuit breaker; one the cloud will never take is given up, logged
and reported. An answer is recorded in the same transaction that removes its request, then emitted; answers
recorded but not yet emitted before a crash are emitted at the next start.

The thread never dies of an error (issue 13, finding 8): a row that cannot be read is quarantined by the outbox and
reported here as `escalation_failed`; anything else that goes wrong in a round (a full disk, a bug) is logged,
counted (`sender_errors`) and the round tried again after a backoff. A dead sender used to leave the daemon
waiting for ever with everything pending.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from google.protobuf.message import DecodeError

from edge_node.adapters.cloud_client import CloudError
from edge_node.daemon.events import EventWriter
from edge_node.daemon.outbox import Outbox, PendingEntry
from edge_node.daemon.retry import BackoffPolicy, BreakerPolicy, CircuitBreaker
from proto.asr.v1 import asr_pb2

log = logging.getLogger(__name__)

_REFUSED = ("UNAUTHENTICATED", "PERMISSION_DENIED")


class CloudCall(Protocol):
    """What the sender needs of the cloud client (edge_node.adapters.cloud_client.EscalationClient)."""

    def transcribe(self, request: asr_pb2.TranscribeRequest) -> asr_pb2.TranscribeResponse: ...


class EscalationSender:
    """Owns the sender thread; `wake()` after putting a request in the outbox, `stop()` at shutdown."""

    def __init__(
        self,
        client: CloudCall | None,
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
        self._explained: set[str] = set()  # error types already logged with their traceback
        self._thread = threading.Thread(target=self._loop, name="escalation-sender", daemon=True)

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.client is not None:
            self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # -- revisions and failures ----------------------------------------------------------------------------------
    def emit_recorded_answers(self) -> None:
        """Answers recorded before a crash but never emitted; one that cannot be read is reported instead."""
        for seg_id, payload in self.outbox.unemitted():
            try:
                resp = asr_pb2.TranscribeResponse.FromString(payload)
            except DecodeError as exc:
                self.outbox.quarantine(seg_id, f"its recorded answer does not parse ({exc})", origin="answered")
                continue
            self._emit_revision(seg_id, resp)
        self._report_quarantined()

    def _emit_revision(self, seg_id: str, resp: asr_pb2.TranscribeResponse) -> None:
        self.events.emit({
            "type": "revision", "segment_id": seg_id, "text": resp.text.strip(), "source": "cloud",
            "language": resp.language, "final": True, "ts": round(time.time(), 3),
        })
        self.outbox.mark_emitted(seg_id)
        self._count("revisions")

    def _emit_failed(self, seg_id: str, reason: str) -> None:
        self.events.emit({"type": "escalation_failed", "segment_id": seg_id, "reason": reason,
                          "ts": round(time.time(), 3)})

    def _report_quarantined(self) -> None:
        """Rows the outbox set aside: each escalation is reported failed once (its edge text stands)."""
        for q in self.outbox.take_quarantined():
            self._count("quarantined")
            self._emit_failed(q.segment_id, f"quarantined: {q.reason}")

    # -- the loop ------------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        """Round after round until stopped; no exception ends the thread (see the module's docstring)."""
        assert self.client is not None
        client = self.client
        self._failing = False
        errors = 0  # consecutive rounds that raised
        with ThreadPoolExecutor(max_workers=self.in_flight, thread_name_prefix="escalate") as pool:
            while not self._stop.is_set():
                try:
                    self._round(client, pool)
                    errors = 0
                except Exception as exc:
                    errors += 1
                    self._on_round_error(exc, errors)

    def _on_round_error(self, exc: Exception, errors: int) -> None:
        self._count("sender_errors")
        delay = self.backoff.ceiling(errors)
        kind = type(exc).__name__
        # The first error of a kind is logged with its traceback (a bug shows where it is); repeats are one line.
        log.error("escalation sender: %s: %s (%d in a row); escalations stay in the outbox, next try in %.1f s",
                  kind, exc, errors, delay, exc_info=kind not in self._explained)
        self._explained.add(kind)
        self._stop.wait(delay)

    def _pause(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _round(self, client: CloudCall, pool: ThreadPoolExecutor) -> None:
        """One round: send what is due (up to `in_flight` at once, the cloud batches them), settle each outcome."""
        self._heartbeat()
        if not self.breaker.allow():
            self._pause(max(0.05, self.breaker.retry_in()))
            return
        entries = self.outbox.due(limit=self.in_flight)
        batch = self._parse(entries)
        self._report_quarantined()
        if not entries:
            nxt = self.outbox.next_due_in()
            self._pause(1.0 if nxt is None else min(1.0, max(0.05, nxt)))
            return
        futures = [(entry, pool.submit(_call, client, request)) for entry, request in batch]
        for entry, future in futures:
            outcome = future.result()
            if isinstance(outcome, CloudError):
                self._on_failure(entry.segment_id, entry.attempts, outcome)
            else:
                self._on_answer(entry.segment_id, outcome)

    def _parse(self, entries: list[PendingEntry]) -> list[tuple[PendingEntry, asr_pb2.TranscribeRequest]]:
        """The requests; a payload that decrypts but is no TranscribeRequest is quarantined, not sent."""
        batch = []
        for entry in entries:
            try:
                batch.append((entry, asr_pb2.TranscribeRequest.FromString(entry.payload)))
            except DecodeError as exc:
                self.outbox.quarantine(entry.segment_id, f"its request does not parse ({exc})")
        return batch

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
            self._emit_failed(seg_id, str(err))


def _call(client: CloudCall, request: asr_pb2.TranscribeRequest) -> asr_pb2.TranscribeResponse | CloudError:
    try:
        return client.transcribe(request)
    except CloudError as err:
        return err
