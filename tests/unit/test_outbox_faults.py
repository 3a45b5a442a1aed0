"""Outbox failure modes on the real SQLite file (issue 13, finding 8): a row that no longer decrypts is quarantined
instead of failing the batch, a wrong key is refused when the outbox is opened, a full database surfaces as itself
(not as "cannot rollback"), and the sender thread survives whatever goes wrong in one round."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter
from pathlib import Path

import pytest

from edge_node.daemon.events import EventWriter
from edge_node.daemon.outbox import Outbox, OutboxError, OutboxLimits, create_key, load_key
from edge_node.daemon.retry import BackoffPolicy, BreakerPolicy
from edge_node.daemon.sender import EscalationSender
from proto.asr.v1 import asr_pb2
from shared.errors import UserError
from testkit.wait import wait_until


@pytest.fixture()
def key(tmp_path: Path) -> bytes:
    create_key(tmp_path / "outbox.key")
    return load_key(tmp_path / "outbox.key")


def _flip_payload(db: Path, segment_id: str, table: str = "pending") -> None:
    """Corrupt one row's ciphertext from outside, as a bad sector or a stray writer would."""
    con = sqlite3.connect(db)
    (blob,) = con.execute(f"SELECT payload FROM {table} WHERE segment_id = ?", (segment_id,)).fetchone()
    con.execute(f"UPDATE {table} SET payload = ? WHERE segment_id = ?", (bytes(b ^ 0xFF for b in blob), segment_id))
    con.commit()
    con.close()


def _request(seg_id: str) -> bytes:
    return asr_pb2.TranscribeRequest(segment_id=seg_id, device_id="d", language="en").SerializeToString()


# -- per-row decryption and quarantine ----------------------------------------------------------------------------
def test_a_corrupt_pending_row_is_quarantined_and_the_others_flow(
    tmp_path: Path, key: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "outbox.db"
    box = Outbox(db, key)
    for seg in ("a", "b", "c"):
        box.put(seg, f"request-{seg}".encode(), 1.0)
    _flip_payload(db, "b")
    assert [(e.segment_id, e.payload) for e in box.due()] == [("a", b"request-a"), ("c", b"request-c")]
    [report] = box.take_quarantined()
    assert report.segment_id == "b" and "decrypt" in report.reason
    assert box.take_quarantined() == []  # reported once
    assert box.due() and box.take_quarantined() == []  # and not found again: it left the pending table
    stats = box.stats()
    assert (stats["pending"], stats["quarantined"]) == (2, 1)
    assert caplog.text.count("quarantined escalation b") == 1
    box.close()
    con = sqlite3.connect(db)  # kept for a post-mortem, not deleted
    assert con.execute("SELECT segment_id, origin FROM quarantine").fetchall() == [("b", "pending")]
    con.close()


def test_a_corrupt_recorded_answer_is_quarantined(tmp_path: Path, key: bytes) -> None:
    db = tmp_path / "outbox.db"
    box = Outbox(db, key)
    for seg in ("a", "b"):
        box.put(seg, b"req", 1.0)
        box.record_answer(seg, f"answer-{seg}".encode())
    _flip_payload(db, "a", table="answered")
    assert box.unemitted() == [("b", b"answer-b")]
    assert [q.segment_id for q in box.take_quarantined()] == ["a"]
    assert box.unemitted() == [("b", b"answer-b")] and box.stats()["quarantined"] == 1


def test_a_request_that_does_not_parse_can_be_quarantined(tmp_path: Path, key: bytes) -> None:
    box = Outbox(tmp_path / "outbox.db", key)
    box.put("a", b"req-a", 1.0)
    box.put("b", b"req-b", 1.0)
    box.quarantine("a", "not a TranscribeRequest")
    assert [e.segment_id for e in box.due()] == ["b"]
    [report] = box.take_quarantined()
    assert (report.segment_id, report.reason) == ("a", "not a TranscribeRequest")
    assert box.stats()["quarantined"] == 1


# -- the key check ------------------------------------------------------------------------------------------------
def test_a_wrong_key_is_refused_when_the_outbox_opens(tmp_path: Path, key: bytes) -> None:
    db = tmp_path / "outbox.db"
    Outbox(db, key).close()  # an empty outbox still remembers which key it was made with
    with pytest.raises(UserError, match="another key"):
        Outbox(db, bytes(32))
    box = Outbox(db, key)  # nothing was changed by the refused open
    box.put("s", b"payload", 1.0)
    assert [e.payload for e in box.due()] == [b"payload"]


def test_the_key_check_covers_outboxes_made_before_it(tmp_path: Path, key: bytes) -> None:
    """An outbox written by an older daemon has no key-check row: its own rows tell whether the key fits."""
    db = tmp_path / "outbox.db"
    box = Outbox(db, key)
    box.put("s", b"payload", 1.0)
    box.close()
    con = sqlite3.connect(db)
    con.execute("DROP TABLE meta")
    con.commit()
    con.close()
    with pytest.raises(UserError, match="another key"):
        Outbox(db, bytes(32))
    box = Outbox(db, key)
    assert [e.payload for e in box.due()] == [b"payload"]
    box.close()
    with pytest.raises(UserError, match="another key"):  # and from now on the key-check row answers
        Outbox(db, bytes(32))


def test_an_outbox_that_cannot_be_created_is_a_user_error(tmp_path: Path, key: bytes) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(UserError, match="outbox"):
        Outbox(tmp_path / "file" / "outbox.db", key)


# -- a full database ----------------------------------------------------------------------------------------------
def _fill_up(box: Outbox) -> None:
    """SQLite's own "disk full" (SQLITE_FULL): the file may not grow past the pages it has. White-box (the
    connection is private) because it is the only way to fill a disk from inside one test process."""
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count = {pages}")


def test_a_full_database_surfaces_as_itself_and_the_outbox_stays_usable(tmp_path: Path, key: bytes) -> None:
    box = Outbox(tmp_path / "outbox.db", key)
    box.put("small", b"x", 1.0)
    _fill_up(box)
    with pytest.raises(OutboxError, match="database or disk is full") as err:
        box.put("big", b"y" * 200_000, 1.0)
    assert "cannot rollback" not in str(err.value)
    assert box.stats()["pending"] == 1  # nothing half-written
    box._db.execute("PRAGMA max_page_count = 1073741823")  # space again
    assert box.put("big", b"y" * 200_000, 1.0)
    assert [e.segment_id for e in box.due()] == ["small", "big"]


def test_an_answer_that_cannot_be_recorded_leaves_its_request_pending(tmp_path: Path, key: bytes) -> None:
    box = Outbox(tmp_path / "outbox.db", key)
    box.put("s", b"x", 1.0)
    _fill_up(box)
    with pytest.raises(OutboxError, match="database or disk is full"):
        box.record_answer("s", b"z" * 200_000)
    assert [e.segment_id for e in box.due()] == ["s"]  # sent again later; the cloud answers it from its store


# -- bounds -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("limits", [{"max_entries": 0}, {"max_entries": -1}, {"max_bytes": 0}])
def test_outbox_limits_must_be_positive(limits: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        OutboxLimits(**limits)


@pytest.mark.parametrize(
    "make",
    [lambda: BackoffPolicy(base_s=0), lambda: BackoffPolicy(base_s=2, cap_s=1), lambda: BackoffPolicy(multiplier=0.5),
     lambda: BreakerPolicy(failure_threshold=0), lambda: BreakerPolicy(reset_after_s=-1)],
)
def test_retry_policies_reject_nonsense(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


# -- the sender thread survives -----------------------------------------------------------------------------------
class FakeCloud:
    """Answers every request with its own segment id; the first `fail_first` calls raise an unexpected error (a
    bug, not a CloudError), which used to kill the sender thread."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.calls = 0
        self._lock = threading.Lock()

    def transcribe(self, request: asr_pb2.TranscribeRequest) -> asr_pb2.TranscribeResponse:
        with self._lock:
            self.calls += 1
            if self.calls <= self.fail_first:
                raise RuntimeError("unexpected failure in the client")
        return asr_pb2.TranscribeResponse(segment_id=request.segment_id, text=f"cloud {request.segment_id}",
                                          language="en")


def _sender(box: Outbox, cloud: FakeCloud, events: EventWriter, counters: Counter[str]) -> EscalationSender:
    return EscalationSender(cloud, box, events, counters, in_flight=2,
                            backoff=BackoffPolicy(base_s=0.01, cap_s=0.05), breaker=BreakerPolicy(),
                            heartbeat=lambda: None, target="fake")


def _events(path: Path) -> dict[str, dict[str, object]]:
    return {e["segment_id"]: e for e in map(json.loads, path.read_text().splitlines())} if path.exists() else {}


def test_the_sender_reports_a_corrupt_row_and_delivers_the_rest(tmp_path: Path, key: bytes) -> None:
    db = tmp_path / "outbox.db"
    box = Outbox(db, key)
    for seg in ("a", "b", "c"):
        box.put(seg, _request(seg), 1.0)
    _flip_payload(db, "a")  # the oldest: it comes first in every batch
    box.put("d", b"\xff\xff not a protobuf", 1.0)  # decrypts, but is no TranscribeRequest
    events = EventWriter(tmp_path / "events.jsonl")
    counters: Counter[str] = Counter()
    sender = _sender(box, FakeCloud(), events, counters)
    sender.start()
    try:
        wait_until(lambda: box.stats()["pending"] == 0, 10, "the outbox to drain", interval=0.05)
    finally:
        sender.stop()
        events.close()
    got = _events(tmp_path / "events.jsonl")
    assert {s: e["type"] for s, e in got.items()} == {"a": "escalation_failed", "b": "revision", "c": "revision",
                                                       "d": "escalation_failed"}
    assert "quarantined" in str(got["a"]["reason"]) and "quarantined" in str(got["d"]["reason"])
    assert counters["quarantined"] == 2 and counters["revisions"] == 2
    assert box.stats()["quarantined"] == 2


def test_the_sender_thread_survives_an_unexpected_error(
    tmp_path: Path, key: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    box = Outbox(tmp_path / "outbox.db", key)
    box.put("a", _request("a"), 1.0)
    events = EventWriter(tmp_path / "events.jsonl")
    counters: Counter[str] = Counter()
    cloud = FakeCloud(fail_first=3)
    sender = _sender(box, cloud, events, counters)
    sender.start()
    try:
        wait_until(lambda: box.stats()["pending"] == 0, 10, "the outbox to drain", interval=0.05)
        assert sender.alive
    finally:
        sender.stop()
        events.close()
    assert _events(tmp_path / "events.jsonl")["a"]["type"] == "revision"
    assert counters["sender_errors"] == 3 and cloud.calls == 4
    assert caplog.text.count("unexpected failure in the client") >= 1
    assert caplog.text.count("Traceback") <= 1  # the first one explains; the repeats are one line each
