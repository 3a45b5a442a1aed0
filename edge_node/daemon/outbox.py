"""The durable escalation outbox: SQLite in WAL mode, audio and text encrypted at rest with AES-256-GCM.

An escalation is written here before it is sent and removed only in the same transaction that records the
cloud's answer, so a crash at any point either replays the request (the cloud dedupes by segment_id) or finds
the answer already stored. The size is bounded; when full, the oldest pending entry is dropped, logged and
counted: never silently.

Failure modes (issue 13, finding 8):
- a row that no longer decrypts (corrupt on disk) is moved to the `quarantine` table, logged once, counted
  (`quarantined`) and handed to the sender to report (`take_quarantined`); the other rows keep flowing;
- a key that is not the one the outbox was sealed with is refused when the outbox opens (a key-check row in
  `meta`), as a UserError, before anything is read or written;
- a write that fails (a full disk, an I/O error) raises OutboxError with SQLite's own message and leaves nothing
  half-written; an outbox that cannot be opened or created at all is a UserError.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.errors import UserError
from shared.fsutil import SECRET_MODE, warn_if_exposed

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    segment_id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    next_attempt REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    audio_seconds REAL NOT NULL,
    size INTEGER NOT NULL,
    nonce BLOB NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS answered (
    segment_id TEXT PRIMARY KEY,
    answered REAL NOT NULL,
    emitted INTEGER NOT NULL DEFAULT 0,
    nonce BLOB NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (
    segment_id TEXT NOT NULL,
    origin TEXT NOT NULL,
    quarantined REAL NOT NULL,
    reason TEXT NOT NULL,
    nonce BLOB,
    payload BLOB,
    PRIMARY KEY (segment_id, origin)
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, nonce BLOB NOT NULL, value BLOB NOT NULL);
"""

# The key-check row: a constant sealed with the outbox's key. Its associated data cannot be a segment id (those
# start with the device id), so the row can never stand in for an escalation.
_KEY_CHECK = b"whisper-fleet outbox key check v1"
_KEY_CHECK_AD = b"\x00key-check"
_QUARANTINE_KEEP = 1000  # quarantined rows kept for a post-mortem; older ones are deleted
_KEY_PROBE_ROWS = 16  # rows tried when an outbox from before the key check is opened

Origin = Literal["pending", "answered"]  # the table a quarantined row came from
_ORIGINS = ("pending", "answered")


class OutboxError(Exception):
    """A read or write the outbox could not make (a full disk, an I/O error), with SQLite's own message. The
    transaction it was part of is rolled back: nothing is half-written."""


@dataclass(frozen=True)
class OutboxLimits:
    max_entries: int = 10_000
    max_bytes: int = 256 * 1024 * 1024  # encrypted payload bytes

    def __post_init__(self) -> None:
        # 0 used to be accepted and crashed the first escalation ("make room" found nothing to drop).
        for name in ("max_entries", "max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"OutboxLimits.{name} must be >= 1, not {getattr(self, name)}")


@dataclass(frozen=True)
class PendingEntry:
    segment_id: str
    payload: bytes  # decrypted
    attempts: int
    audio_seconds: float


@dataclass(frozen=True)
class Quarantined:
    """A row set aside because it could not be read: the escalation is reported as failed."""

    segment_id: str
    reason: str
    origin: Origin = "pending"


def load_key(path: Path) -> bytes:
    """A 32-byte AES key: raw bytes, or 64 hex characters. Never logged; a warning if others can read it."""
    warn_if_exposed(path, "outbox key")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read outbox key {path}: {exc.strerror}") from None
    text = raw.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text.decode())
        except (ValueError, UnicodeDecodeError):
            pass
    if len(raw) == 32:
        return raw
    raise UserError(f"outbox key {path} must hold 32 raw bytes or 64 hex characters")


def create_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: never overwrite a key (the outbox sealed with it would become unreadable); fchmod: exactly 0600
    # whatever the umask.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_MODE)
    os.fchmod(fd, SECRET_MODE)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")


class Outbox:
    """Thread-safe; one connection guarded by a lock (SQLite writes are serialised anyway)."""

    def __init__(self, path: Path, key: bytes, limits: OutboxLimits = OutboxLimits(), *,
                 key_name: str = "the outbox key") -> None:
        if len(key) != 32:
            raise UserError("outbox key must be 32 bytes (AES-256)")
        self._aead = AESGCM(key)
        self._limits = limits
        self._lock = threading.Lock()
        self._reports: list[Quarantined] = []  # quarantined since the last take_quarantined()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"cannot open the outbox {path}: {_why(exc)}") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged put survives power loss
            # One transaction: the schema appears whole or not at all, and in a few WAL frames, not one set per table.
            self._db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
            self._check_key(path, key_name)
        except sqlite3.Error as exc:
            self._db.close()
            raise UserError(f"cannot open the outbox {path}: {exc} (is its disk full or read-only?)") from None
        except UserError:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- encryption: the segment id is authenticated data, so rows cannot be swapped between ids
    def _seal(self, segment_id: str, data: bytes) -> tuple[bytes, bytes]:
        nonce = os.urandom(12)
        return nonce, self._aead.encrypt(nonce, data, segment_id.encode())

    def _open(self, aad: bytes, nonce: bytes, blob: bytes) -> bytes | str:
        """The plaintext, or why there is none. Anything may be in a damaged row (a wrong nonce length, a NULL,
        text instead of bytes): every failure is this row's, never the batch's."""
        try:
            return self._aead.decrypt(nonce, blob, aad)
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return f"cannot be decrypted ({detail}): corrupt on disk"

    def _check_key(self, path: Path, key_name: str) -> None:
        """Refuse a key that is not the outbox's, before anything is read: it used to surface as InvalidTag in the
        sender thread, which died and left the daemon waiting for ever."""
        row = self._db.execute("SELECT nonce, value FROM meta WHERE name = 'key_check'").fetchone()
        if row is not None:
            fits = isinstance(self._open(_KEY_CHECK_AD, row[0], row[1]), bytes)
        else:  # new, or made before the key check: its own rows tell (one that opens is enough)
            rows = self._db.execute(
                "SELECT segment_id, nonce, payload FROM pending UNION ALL"
                " SELECT segment_id, nonce, payload FROM answered LIMIT ?", (_KEY_PROBE_ROWS,)
            ).fetchall()
            fits = not rows or any(isinstance(self._open(str(r[0]).encode(), r[1], r[2]), bytes) for r in rows)
            if fits:
                nonce = os.urandom(12)
                self._db.execute("INSERT OR IGNORE INTO meta(name, nonce, value) VALUES ('key_check', ?, ?)",
                                 (nonce, self._aead.encrypt(nonce, _KEY_CHECK, _KEY_CHECK_AD)))
        if not fits:
            raise UserError(f"{key_name} does not open the outbox {path}: it was sealed with another key; start "
                            f"with the key it was made with (or move {path.name}* aside to start an empty outbox)")

    # -- locking and transactions
    @contextmanager
    def _locked(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {what} failed: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT. On some errors (SQLITE_FULL among them) SQLite has already rolled the
        transaction back itself: ROLLBACK only while one is open, so the caller sees the real error ("database
        or disk is full"), not "cannot rollback - no transaction is active"."""
        with self._locked("write") as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error as exc:  # the first error is the one to report
                        log.warning("outbox rollback failed too: %s", exc)
                raise

    def _bump(self, name: str, by: int = 1) -> None:
        self._db.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
            (name, by, by),
        )

    # -- requests
    def put(self, segment_id: str, payload: bytes, audio_seconds: float) -> bool:
        """Store a request. False if this segment is already pending or answered (idempotent). OutboxError
        if it cannot be written (a full disk): then nothing of it is stored."""
        nonce, blob = self._seal(segment_id, payload)
        now = time.time()
        with self._transaction() as db:
            known = db.execute(
                "SELECT 1 FROM pending WHERE segment_id = ? UNION SELECT 1 FROM answered WHERE segment_id = ?",
                (segment_id, segment_id),
            ).fetchone()
            if known:
                return False
            self._make_room(len(blob))
            db.execute(
                "INSERT INTO pending(segment_id, created, next_attempt, audio_seconds, size, nonce, payload)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (segment_id, now, now, audio_seconds, len(blob), nonce, blob),
            )
            self._bump("enqueued")
        return True

    def _make_room(self, incoming: int) -> None:
        count, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM pending").fetchone()
        while count >= self._limits.max_entries or (count and size + incoming > self._limits.max_bytes):
            row = self._db.execute("SELECT segment_id, size FROM pending ORDER BY created LIMIT 1").fetchone()
            if row is None:
                return
            self._db.execute("DELETE FROM pending WHERE segment_id = ?", (row[0],))
            self._bump("dropped_full")
            log.warning("outbox full (%d entries, %d bytes): dropped oldest escalation %s", count, size, row[0])
            count, size = count - 1, size - row[1]

    def due(self, now: float | None = None, limit: int = 16) -> list[PendingEntry]:
        """Requests due for a (re)try, oldest first. A row that does not decrypt is quarantined, not returned."""
        now = time.time() if now is None else now
        with self._locked("read") as db:
            rows = db.execute(
                "SELECT segment_id, attempts, audio_seconds, nonce, payload FROM pending"
                " WHERE next_attempt <= ? ORDER BY created LIMIT ?",
                (now, limit),
            ).fetchall()
        entries = []
        for seg_id, attempts, audio_seconds, nonce, blob in rows:
            plain = self._open(str(seg_id).encode(), nonce, blob)
            if isinstance(plain, bytes):
                entries.append(PendingEntry(seg_id, plain, attempts, audio_seconds))
            else:
                self.quarantine(seg_id, f"its request {plain}")
        return entries

    def next_due_in(self, now: float | None = None) -> float | None:
        now = time.time() if now is None else now
        with self._locked("read") as db:
            row = db.execute("SELECT MIN(next_attempt) FROM pending").fetchone()
        return None if row[0] is None else max(0.0, row[0] - now)

    def retry_later(self, segment_id: str, delay_s: float) -> None:
        with self._locked("write") as db:
            db.execute(
                "UPDATE pending SET attempts = attempts + 1, next_attempt = ? WHERE segment_id = ?",
                (time.time() + delay_s, segment_id),
            )

    def give_up(self, segment_id: str, reason: str) -> None:
        """A request the cloud will never accept (e.g. INVALID_ARGUMENT): drop it, logged and counted."""
        with self._transaction() as db:
            db.execute("DELETE FROM pending WHERE segment_id = ?", (segment_id,))
            self._bump("rejected")
        log.warning("escalation %s rejected by the cloud and dropped: %s", segment_id, reason)

    # -- quarantine
    def quarantine(self, segment_id: str, reason: str, origin: Origin = "pending") -> None:
        """Move a row that cannot be used (it does not decrypt, or its content does not parse) out of `origin`
        into the quarantine table: logged once, counted, and reported by the next `take_quarantined()`."""
        if origin not in _ORIGINS:  # it is spliced into the SQL below
            raise ValueError(f"origin must be one of {_ORIGINS}, not {origin!r}")
        with self._transaction() as db:
            moved = db.execute(
                f"INSERT OR REPLACE INTO quarantine(segment_id, origin, quarantined, reason, nonce, payload)"
                f" SELECT segment_id, ?, ?, ?, nonce, payload FROM {origin} WHERE segment_id = ?",
                (origin, time.time(), reason, segment_id),
            ).rowcount
            if moved:
                db.execute(f"DELETE FROM {origin} WHERE segment_id = ?", (segment_id,))
                db.execute("DELETE FROM quarantine WHERE rowid NOT IN"
                           " (SELECT rowid FROM quarantine ORDER BY quarantined DESC LIMIT ?)", (_QUARANTINE_KEEP,))
                self._bump("quarantined")
        if moved:  # after the commit: a report is only made for a row really set aside
            with self._lock:
                self._reports.append(Quarantined(segment_id, reason, origin))
            log.error("quarantined escalation %s: %s; the edge text stands", segment_id, reason)

    def take_quarantined(self) -> list[Quarantined]:
        """Rows quarantined since the last call (each is reported once)."""
        with self._lock:
            reports, self._reports = self._reports, []
        return reports

    # -- answers
    def record_answer(self, segment_id: str, answer: bytes) -> bool:
        """Atomically move a segment from pending to answered. False if it was not pending (a duplicate).
        OutboxError if it cannot be written: the request then stays pending and is sent again later."""
        nonce, blob = self._seal(segment_id, answer)
        with self._transaction() as db:
            gone = db.execute("DELETE FROM pending WHERE segment_id = ?", (segment_id,)).rowcount
            if gone:
                db.execute(
                    "INSERT OR IGNORE INTO answered(segment_id, answered, nonce, payload) VALUES (?, ?, ?, ?)",
                    (segment_id, time.time(), nonce, blob),
                )
                self._bump("answered")
        return bool(gone)

    def unemitted(self) -> list[tuple[str, bytes]]:
        """Answers recorded but not yet written out (a crash between the two): emit them on restart. An answer
        that does not decrypt is quarantined, not returned."""
        with self._locked("read") as db:
            rows = db.execute(
                "SELECT segment_id, nonce, payload FROM answered WHERE emitted = 0 ORDER BY answered"
            ).fetchall()
        answers = []
        for seg_id, nonce, blob in rows:
            plain = self._open(str(seg_id).encode(), nonce, blob)
            if isinstance(plain, bytes):
                answers.append((seg_id, plain))
            else:
                self.quarantine(seg_id, f"its recorded answer {plain}", origin="answered")
        return answers

    def mark_emitted(self, segment_id: str) -> None:
        with self._locked("write") as db:
            db.execute("UPDATE answered SET emitted = 1 WHERE segment_id = ?", (segment_id,))

    def stats(self) -> dict[str, int]:
        with self._locked("read") as db:
            pending = db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
            counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
        return {"pending": int(pending), **{k: int(v) for k, v in counters.items()}}


def _why(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
