"""Fuzz outbox rows (issue 13): what a bad sector, a stray writer or an attacker with the disk (but not the key)
can leave in the edge's SQLite outbox. SQLite is dynamically typed, so any column may hold any type.

Each case tampers with one column of one pending or answered row. Invariants: opening, `due()` and `unemitted()`
never raise; every untouched row still comes back intact; a tampered row either still decrypts to its own
plaintext (the change did not touch what is authenticated) or is quarantined and reported once; nothing ever
comes back under another row's segment id.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_node.daemon.outbox import Outbox, create_key, load_key
from tests.fuzz.conftest import fuzz_settings

pytestmark = [pytest.mark.fuzz]

IDS = [f"dev-{i}" for i in range(4)]
COLUMNS = {"pending": ["segment_id", "created", "next_attempt", "attempts", "audio_seconds", "size", "nonce",
                       "payload"],
           "answered": ["segment_id", "answered", "emitted", "nonce", "payload"]}
ANY_VALUE = st.one_of(st.binary(max_size=64), st.text(max_size=20), st.integers(-(2**63), 2**63 - 1), st.floats(),
                      st.sampled_from(IDS))


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("key") / "outbox.key"
    create_key(path)
    return load_key(path)


def _fresh(db: Path, key: bytes) -> None:
    for p in db.parent.glob(db.name + "*"):
        p.unlink()
    box = Outbox(db, key)
    for seg in IDS:
        box.put(seg, f"request {seg}".encode(), 1.0)
    for seg in IDS[:2]:
        box.record_answer(seg, f"answer {seg}".encode())
    box.close()


@st.composite
def tamper(draw: st.DrawFn) -> tuple[str, str, str, object]:
    table = draw(st.sampled_from(["pending", "answered"]))
    seg = draw(st.sampled_from(IDS[2:] if table == "pending" else IDS[:2]))
    column = draw(st.sampled_from(COLUMNS[table]))
    value = draw(ANY_VALUE) if column not in ("nonce", "payload") else None
    return table, seg, column, value


def _apply(db: Path, table: str, seg: str, column: str, value: object, mutate: bytes | None) -> None:
    con = sqlite3.connect(db)
    if column in ("nonce", "payload") and mutate is not None:
        value = mutate
    try:
        con.execute(f"UPDATE {table} SET {column} = ? WHERE segment_id = ?", (value, seg))
        con.commit()
    except sqlite3.IntegrityError:  # e.g. a duplicate segment id: the disk cannot hold that row either
        pass
    con.close()


def test_tampered_rows(tmp_path: Path, key: bytes) -> None:
    db = tmp_path / "outbox.db"

    @fuzz_settings
    @given(change=tamper(), junk=st.binary(max_size=96))
    def case(change: tuple[str, str, str, object], junk: bytes) -> None:
        table, seg, column, value = change
        _fresh(db, key)
        blob = None
        if column in ("nonce", "payload"):
            con = sqlite3.connect(db)
            (orig,) = con.execute(f"SELECT {column} FROM {table} WHERE segment_id = ?", (seg,)).fetchone()
            con.close()
            blob = junk if junk and junk[0] % 2 else bytes(orig[: len(junk)]) + junk  # replaced, or cut and extended
        _apply(db, table, seg, column, value, blob)
        box = Outbox(db, key)
        pending = {e.segment_id: e.payload for e in box.due(now=1e12, limit=100)}
        answers = dict(box.unemitted())
        reports = box.take_quarantined()
        for sid, payload in pending.items():
            assert payload == f"request {sid}".encode(), (sid, payload)
        for sid, answer in answers.items():
            assert answer == f"answer {sid}".encode(), (sid, answer)
        untouched = {s for s in IDS if s != seg}
        assert untouched - set(IDS[:2]) <= set(pending) and untouched & set(IDS[:2]) <= set(answers)
        if reports:
            assert all(r.reason for r in reports)
        assert box.take_quarantined() == []  # reported once
        box.close()

    case()
