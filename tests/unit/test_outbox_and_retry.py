"""The durable outbox (real SQLite files, real AES-GCM) and the retry policy (fake clock: a wait loop)."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from edge_node.daemon.outbox import Outbox, OutboxLimits, create_key, load_key
from edge_node.daemon.retry import BackoffPolicy, BreakerPolicy, BreakerState, CircuitBreaker
from shared.errors import UserError
from shared.wire_audio import WireEncoding, encode
from tests.audio_fixtures import data_prompts


@pytest.fixture()
def key(tmp_path: Path) -> bytes:
    create_key(tmp_path / "outbox.key")
    return load_key(tmp_path / "outbox.key")


def test_put_is_idempotent_and_survives_reopen(tmp_path: Path, key: bytes) -> None:
    db = tmp_path / "state" / "outbox.db"
    box = Outbox(db, key)
    assert box.put("seg-1", b"request-1", 2.0)
    assert not box.put("seg-1", b"request-1", 2.0)
    box.close()
    box = Outbox(db, key)  # a restart
    [entry] = box.due()
    assert (entry.segment_id, entry.payload) == ("seg-1", b"request-1")
    assert box.record_answer("seg-1", b"answer-1")
    assert not box.record_answer("seg-1", b"answer-1")  # a duplicate answer changes nothing
    assert not box.put("seg-1", b"request-1", 2.0)  # answered ids are not re-enqueued
    assert box.due() == []
    assert box.unemitted() == [("seg-1", b"answer-1")]
    box.mark_emitted("seg-1")
    assert box.unemitted() == []
    assert box.stats()["answered"] == 1


def test_nothing_readable_at_rest(tmp_path: Path, key: bytes) -> None:
    db = tmp_path / "outbox.db"
    box = Outbox(db, key)
    audio = (np.sin(np.arange(16000) / 7.0) * 0.5).astype(np.float32)
    raw = encode(audio, WireEncoding.PCM16)
    secret_text = b"the quick brown fox said the password is swordfish"
    box.put("seg-A", raw + secret_text, 1.0)
    box.record_answer("seg-A", secret_text)
    box.put("seg-B", raw, 1.0)
    box.close()
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("outbox.db"))
    assert raw[1000:1064] not in blob
    assert b"swordfish" not in blob


def test_wrong_key_cannot_read(tmp_path: Path, key: bytes) -> None:
    box = Outbox(tmp_path / "o.db", key)
    box.put("s", b"payload", 1.0)
    box.close()
    with pytest.raises(UserError, match="sealed with another key"):  # refused at open, before any row is read
        Outbox(tmp_path / "o.db", bytes(32))


def test_rows_cannot_be_swapped_between_segments(tmp_path: Path, key: bytes) -> None:
    box = Outbox(tmp_path / "o.db", key)
    box.put("a", b"payload-a", 1.0)
    box.put("b", b"payload-b", 1.0)
    box.close()
    con = sqlite3.connect(tmp_path / "o.db")
    a = con.execute("SELECT nonce, payload FROM pending WHERE segment_id='a'").fetchone()
    con.execute("UPDATE pending SET nonce=?, payload=? WHERE segment_id='b'", a)
    con.commit()
    con.close()
    box = Outbox(tmp_path / "o.db", key)
    assert [e.payload for e in box.due()] == [b"payload-a"]  # b's row now holds a's sealing: it does not open
    assert [q.segment_id for q in box.take_quarantined()] == ["b"]  # so it is set aside, never served as b


def test_bounded_size_drops_oldest_and_counts(tmp_path: Path, key: bytes, caplog: pytest.LogCaptureFixture) -> None:
    box = Outbox(tmp_path / "o.db", key, OutboxLimits(max_entries=3))
    for i in range(5):
        box.put(f"s{i}", b"x" * 10, 1.0)
    assert [e.segment_id for e in box.due()] == ["s2", "s3", "s4"]
    assert box.stats()["dropped_full"] == 2
    assert "dropped oldest escalation s0" in caplog.text


def test_retry_later_defers(tmp_path: Path, key: bytes) -> None:
    box = Outbox(tmp_path / "o.db", key)
    box.put("s", b"x", 1.0)
    box.retry_later("s", 60.0)
    assert box.due() == []
    nxt = box.next_due_in()
    assert nxt is not None and 50 < nxt <= 60
    [e] = box.due(now=1e12)
    assert e.attempts == 1


def test_bad_key_files(tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"abc")
    with pytest.raises(UserError, match="32 raw bytes or 64 hex"):
        load_key(tmp_path / "short")
    with pytest.raises(UserError, match="cannot read outbox key"):
        load_key(tmp_path / "missing")


def test_backoff_is_jittered_and_capped() -> None:
    policy = BackoffPolicy(base_s=0.5, cap_s=8.0)
    rng = random.Random(1)
    delays = [policy.delay(a, rng) for a in range(12)]
    assert all(0 <= d <= min(8.0, 0.5 * 2**a) for a, d in enumerate(delays))
    assert len(set(delays)) == len(delays)  # jitter: no lock-step


def test_circuit_breaker_opens_half_opens_and_closes() -> None:
    now = [0.0]
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=3, reset_after_s=10.0), clock=lambda: now[0])
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    now[0] = 10.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow() and not breaker.allow()  # one trial only
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and breaker.retry_in() == pytest.approx(10.0)
    now[0] = 20.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


@pytest.mark.parametrize("enc", list(WireEncoding))
def test_edge_encoding_roundtrips_through_the_cloud_decoder(enc: WireEncoding) -> None:
    """What the edge encodes (shared.wire_audio) is what the cloud decodes (cloud_service.asr.audio_codec)."""
    from cloud_service.asr.audio_codec import Encoding, decode_audio
    from shared.audio_files import load_audio

    audio = load_audio(data_prompts("en")[0].wav)
    data = encode(audio, enc)
    back = decode_audio(Encoding[enc.name], 16000, data, max_seconds=30.0)
    if enc is WireEncoding.OPUS:
        assert back.source_rate in (16000, 48000)  # libsndfile may report Opus's native rate
        assert len(data) < len(encode(audio, WireEncoding.FLAC))
        assert abs(back.seconds - audio.size / 16000) < 0.1
    else:
        assert back.source_rate == 16000 and len(back.samples) == len(audio)
        assert np.abs(back.samples - audio).max() < 2e-4  # 16-bit quantization only


def test_cloud_decoder_rejects_bad_wire_audio() -> None:
    from cloud_service.asr.audio_codec import AudioError, Encoding, decode_audio

    with pytest.raises(AudioError, match="empty"):
        decode_audio(Encoding.FLAC, 16000, b"", 30.0)
    with pytest.raises(AudioError, match="odd number of bytes"):
        decode_audio(Encoding.PCM16, 16000, b"\x00\x01\x02", 30.0)
    with pytest.raises(AudioError, match="corrupt FLAC"):
        decode_audio(Encoding.FLAC, 16000, b"fLaC" + b"\x00" * 50, 30.0)
    flac = encode(np.zeros(1600, np.float32), WireEncoding.FLAC)
    with pytest.raises(AudioError, match="declared OPUS but the data is a FLAC file"):
        decode_audio(Encoding.OPUS, 16000, flac, 30.0)
