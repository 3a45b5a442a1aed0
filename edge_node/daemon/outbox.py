"""The durable escalation outbox: SQLite in WAL mode, audio and text encrypted at rest with AES-256-GCM.

An escalation is written here before it is sent and removed only in the same transaction that records the
cloud's answer, so a crash at any point either replays the request (the cloud dedupes by segment_id) or finds
the answer already stored. The size is bounded; when full, the oldest pending entry is dropped, logged and
counted: never silently.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

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
"""


@dataclass(frozen=True)
class OutboxLimits:
    max_entries: int = 10_000
    max_bytes: int = 256 * 1024 * 1024  # encrypted payload bytes


@dataclass(frozen=True)
class PendingEntry:
    segment_id: str
    payload: bytes  # decrypted
    attempts: int
    audio_seconds: float


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

    def __init__(self, path: Path, key: bytes, limits: OutboxLimits = OutboxLimits()) -> None:
        if len(key) != 32:
            raise UserError("outbox key must be 32 bytes (AES-256)")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._aead = AESGCM(key)
        self._limits = limits
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged put survives power loss
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- encryption: the segment id is authenticated data, so rows cannot be swapped between ids
    def _seal(self, segment_id: str, data: bytes) -> tuple[bytes, bytes]:
        nonce = os.urandom(12)
        return nonce, self._aead.encrypt(nonce, data, segment_id.encode())

    def _open(self, segment_id: str, nonce: bytes, blob: bytes) -> bytes:
        return self._aead.decrypt(nonce, blob, segment_id.encode())

    def _bump(self, name: str, by: int = 1) -> None:
        self._db.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
            (name, by, by),
        )

    def put(self, segment_id: str, payload: bytes, audio_seconds: float) -> bool:
        """Store a request. False if this segment is already pending or answered (idempotent)."""
        nonce, blob = self._seal(segment_id, payload)
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                known = self._db.execute(
                    "SELECT 1 FROM pending WHERE segment_id = ? UNION SELECT 1 FROM answered WHERE segment_id = ?",
                    (segment_id, segment_id),
                ).fetchone()
                if known:
                    self._db.execute("COMMIT")
                    return False
                self._make_room(len(blob))
                self._db.execute(
                    "INSERT INTO pending(segment_id, created, next_attempt, audio_seconds, size, nonce, payload)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (segment_id, now, now, audio_seconds, len(blob), nonce, blob),
                )
                self._bump("enqueued")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return True

    def _make_room(self, incoming: int) -> None:
        count, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM pending").fetchone()
        while count >= self._limits.max_entries or (count and size + incoming > self._limits.max_bytes):
            row = self._db.execute("SELECT segment_id, size FROM pending ORDER BY created LIMIT 1").fetchone()
            self._db.execute("DELETE FROM pending WHERE segment_id = ?", (row[0],))
            self._bump("dropped_full")
            log.warning("outbox full (%d entries, %d bytes): dropped oldest escalation %s", count, size, row[0])
            count, size = count - 1, size - row[1]

    def due(self, now: float | None = None, limit: int = 16) -> list[PendingEntry]:
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT segment_id, attempts, audio_seconds, nonce, payload FROM pending"
                " WHERE next_attempt <= ? ORDER BY created LIMIT ?",
                (now, limit),
            ).fetchall()
        return [PendingEntry(r[0], self._open(r[0], r[3], r[4]), r[1], r[2]) for r in rows]

    def next_due_in(self, now: float | None = None) -> float | None:
        now = time.time() if now is None else now
        with self._lock:
            row = self._db.execute("SELECT MIN(next_attempt) FROM pending").fetchone()
        return None if row[0] is None else max(0.0, row[0] - now)

    def retry_later(self, segment_id: str, delay_s: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE pending SET attempts = attempts + 1, next_attempt = ? WHERE segment_id = ?",
                (time.time() + delay_s, segment_id),
            )

    def give_up(self, segment_id: str, reason: str) -> None:
        """A request the cloud will never accept (e.g. INVALID_ARGUMENT): drop it, logged and counted."""
        with self._lock:
            self._db.execute("DELETE FROM pending WHERE segment_id = ?", (segment_id,))
            self._bump("rejected")
        log.warning("escalation %s rejected by the cloud and dropped: %s", segment_id, reason)

    def record_answer(self, segment_id: str, answer: bytes) -> bool:
        """Atomically move a segment from pending to answered. False if it was not pending (a duplicate)."""
        nonce, blob = self._seal(segment_id, answer)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                gone = self._db.execute("DELETE FROM pending WHERE segment_id = ?", (segment_id,)).rowcount
                if gone:
                    self._db.execute(
                        "INSERT OR IGNORE INTO answered(segment_id, answered, nonce, payload) VALUES (?, ?, ?, ?)",
                        (segment_id, time.time(), nonce, blob),
                    )
                    self._bump("answered")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return bool(gone)

    def unemitted(self) -> list[tuple[str, bytes]]:
        """Answers recorded but not yet written out (a crash between the two): emit them on restart."""
        with self._lock:
            rows = self._db.execute(
                "SELECT segment_id, nonce, payload FROM answered WHERE emitted = 0 ORDER BY answered"
            ).fetchall()
        return [(r[0], self._open(r[0], r[1], r[2])) for r in rows]

    def mark_emitted(self, segment_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE answered SET emitted = 1 WHERE segment_id = ?", (segment_id,))

    def stats(self) -> dict[str, int]:
        with self._lock:
            pending = self._db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return {"pending": int(pending), **{k: int(v) for k, v in counters.items()}}
