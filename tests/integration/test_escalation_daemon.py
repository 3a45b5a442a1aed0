"""Black-box tests of `edge-node run` against a real `cloud-service serve`, real Redis and real speech.

Each escalated segment must end with exactly one cloud revision whatever is killed; confident ones get none.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from evaluation.asterisk import available, prompts
from testkit.escalation import (
    ROOT,
    CloudProcess,
    daemon_cmd,
    read_events,
    run_daemon,
    speech_file,
    tally,
)
from testkit.servers import RedisServer, free_port
from testkit.wait import wait_for
from tests.prereq import require

pytestmark = [pytest.mark.faults, pytest.mark.slow]

DEVICE = "edge-test"


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two clean English prompts (confident) and three Spanish ones (the English-only model doubts them)."""
    require(bool(available("en") and available("es")), "Asterisk prompts not installed")
    require((ROOT / "models" / "base.pt").exists() and (ROOT / "models" / "tiny.en-int8").exists(), "models missing")
    en = {p.id: p.wav for p in prompts("en", min_words=4)}
    es = {p.id: p.wav for p in prompts("es", min_words=4)}
    wavs = [en["vm-goodbye"] if "vm-goodbye" in en else next(iter(en.values())), en["conf-adminmenu"],
            es["agent-alreadyon"], es["vm-options"], es["conf-getpin"]]
    return speech_file(tmp_path_factory.mktemp("audio") / "mixed.wav", wavs)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CloudProcess, Path]]:
    work = tmp_path_factory.mktemp("cloud")
    redis = RedisServer(work / "redis")
    redis.start()
    server = CloudProcess(work, redis.url)
    server.start()
    token_file = work / "token"
    token_file.write_text(server.add_device(DEVICE))
    yield server, token_file
    server.stop()
    redis.stop()


def test_escalated_segments_get_exactly_one_revision(speech: Path, cloud: tuple[CloudProcess, Path],
                                                     tmp_path: Path) -> None:
    server, token = cloud
    events = tmp_path / "events.jsonl"
    rc = run_daemon(daemon_cmd(str(speech), tmp_path / "state", events, DEVICE, server.target, token),
                    tmp_path / "edge.log")
    assert rc == 0, (tmp_path / "edge.log").read_text()[-3000:]
    evs = read_events(events)
    escalated, final, revisions = tally(evs)
    assert escalated, "the Spanish prompts should escalate"
    assert final, "the clean English prompts should not"
    assert set(revisions) == escalated and all(n == 1 for n in revisions.values()), revisions
    langs = {e["language"] for e in evs if e["type"] == "revision"}
    assert "es" in langs  # asked to detect: the cloud names Spanish instead of translating it
    spanish = " ".join(e["text"] for e in evs if e["type"] == "revision").lower()
    assert "agente" in spanish or "número" in spanish or "numero" in spanish


def test_cloud_killed_mid_run_loses_nothing(speech: Path, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    server = CloudProcess(tmp_path / "cloud", redis.url)
    server.start()
    token = tmp_path / "token"
    token.write_text(server.add_device(DEVICE))
    events = tmp_path / "events.jsonl"
    cmd = daemon_cmd(str(speech), tmp_path / "state", events, DEVICE, server.target, token)
    log = (tmp_path / "edge.log").open("ab")
    edge = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        # Kill the cloud as soon as the edge has escalated something, before every answer is in.
        assert wait_for(lambda: tally(read_events(events))[0], 120)
        server.kill()
        assert wait_for(lambda: "kept in the outbox" in (tmp_path / "edge.log").read_text(), 60)
        server.start()  # same port, a little later
        assert edge.wait(240) == 0
    finally:
        if edge.poll() is None:
            edge.kill()
        server.stop()
        redis.stop()
    escalated, _, revisions = tally(read_events(events))
    assert escalated and set(revisions) == escalated
    assert all(n == 1 for n in revisions.values()), revisions


def test_edge_killed_mid_run_replays_outbox(speech: Path, cloud: tuple[CloudProcess, Path], tmp_path: Path) -> None:
    server, token = cloud
    events = tmp_path / "events.jsonl"
    state = tmp_path / "state"
    # First run against a cloud that is not there: escalations pile up in the outbox; then SIGKILL.
    dead = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "edge.log").open("ab")
    edge = subprocess.Popen(daemon_cmd(str(speech), state, events, DEVICE, dead, token), cwd=ROOT,
                            stdout=log, stderr=log)
    assert wait_for(lambda: len(tally(read_events(events))[0]) >= 3, 120)
    edge.send_signal(signal.SIGKILL)
    edge.wait(10)
    before, _, _ = tally(read_events(events))
    # Restart against the live cloud: the outbox replays.
    assert run_daemon(daemon_cmd(str(speech), state, events, DEVICE, server.target, token), tmp_path / "edge.log") == 0
    escalated, final, revisions = tally(read_events(events))
    assert before <= escalated
    assert set(revisions) == escalated and all(n == 1 for n in revisions.values()), revisions
    assert not (escalated & final)


def test_a_corrupt_outbox_row_is_quarantined_and_the_rest_answered(
    speech: Path, cloud: tuple[CloudProcess, Path], tmp_path: Path
) -> None:
    """One pending row that no longer decrypts (a bad sector, a stray writer) is set aside and reported; it used to
    fail every batch, kill the sender thread and leave the daemon waiting for ever with everything pending."""
    server, token = cloud
    events, state = tmp_path / "events.jsonl", tmp_path / "state"
    log = (tmp_path / "edge.log").open("ab")
    edge = subprocess.Popen(daemon_cmd(str(speech), state, events, DEVICE, f"127.0.0.1:{free_port()}", token),
                            cwd=ROOT, stdout=log, stderr=log)
    assert wait_for(lambda: len(tally(read_events(events))[0]) >= 3, 120)
    edge.send_signal(signal.SIGTERM)
    assert edge.wait(60) == 0
    con = sqlite3.connect(state / "outbox.db")
    bad, blob = con.execute("SELECT segment_id, payload FROM pending ORDER BY created LIMIT 1").fetchone()
    con.execute("UPDATE pending SET payload = ? WHERE segment_id = ?", (bytes(b ^ 0xFF for b in blob), bad))
    con.commit()
    con.close()
    # Restarted against the live cloud: the bad row is reported once, every other escalation answered once.
    assert run_daemon(daemon_cmd(str(speech), state, events, DEVICE, server.target, token), tmp_path / "edge.log",
                      timeout=180) == 0
    evs = read_events(events)
    escalated, _, revisions = tally(evs)
    failed = [e for e in evs if e["type"] == "escalation_failed"]
    assert [e["segment_id"] for e in failed] == [bad] and "quarantined" in failed[0]["reason"]
    assert set(revisions) == escalated - {bad} and all(n == 1 for n in revisions.values()), revisions
    text = (tmp_path / "edge.log").read_text()
    assert "Traceback" not in text and "'quarantined': 1" in text, text[-3000:]


def test_outbox_at_rest_holds_no_plaintext(speech: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    state = tmp_path / "state"
    token = tmp_path / "token"
    token.write_text("edge-test.not-a-real-token")
    dead = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "edge.log").open("ab")
    edge = subprocess.Popen(daemon_cmd(str(speech), state, events, DEVICE, dead, token), cwd=ROOT,
                            stdout=log, stderr=log)
    assert wait_for(lambda: len(tally(read_events(events))[0]) >= 3, 120)
    edge.send_signal(signal.SIGTERM)
    assert edge.wait(60) == 0
    blob = b"".join(p.read_bytes() for p in state.glob("outbox.db*"))
    assert len(blob) > 10_000  # the escalations are really in there
    assert b"fLaC" not in blob  # no FLAC stream in the clear
    for e in read_events(events):
        if e["type"] == "segment" and not e["final"] and len(e["text"]) > 8:
            assert e["text"].encode() not in blob
    from shared.audio_files import load_audio

    pcm = (np.clip(load_audio(speech), -1, 1) * 32767).astype("<i2").tobytes()
    assert pcm[200_000:200_064] not in blob


def test_bad_stdin_and_unreachable_cloud_and_bad_token(cloud: tuple[CloudProcess, Path], tmp_path: Path) -> None:
    server, _ = cloud
    require((ROOT / "models" / "tiny.en-int8").exists(), "models missing")
    log = tmp_path / "edge.log"
    # Odd byte count and silence only: clean exit, a clear line for the odd byte, no segments.
    silence = bytes(16000 * 2 * 5 + 1)
    assert run_daemon(daemon_cmd("-", tmp_path / "s1", tmp_path / "e1.jsonl", DEVICE), log, stdin=silence) == 0
    assert "odd byte count" in log.read_text()
    assert [e for e in read_events(tmp_path / "e1.jsonl") if e["type"] == "segment"] == []
    # A long stretch of loud noise streams through in bounded chunks without crashing.
    noise = (np.random.default_rng(0).normal(0, 0.3, 16000 * 90).clip(-1, 1) * 32767).astype("<i2").tobytes()
    assert run_daemon(daemon_cmd("-", tmp_path / "s2", tmp_path / "e2.jsonl", DEVICE), log, stdin=noise) == 0
    # A bad token: the cloud refuses, the daemon says so, keeps the escalation and stops cleanly on SIGTERM.
    bad = tmp_path / "bad.token"
    bad.write_text(f"{DEVICE}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    # A clearly spoken Spanish prompt the edge keeps and escalates ("Clave incorrecta..."); the first one,
    # agent-alreadyon, sits on the no-speech drop boundary and, with some thread counts, yields no segment.
    spanish = next(p for p in prompts("es", min_words=4) if p.id == "agent-incorrect").wav
    out = (tmp_path / "bad.log").open("ab")
    edge = subprocess.Popen(daemon_cmd(str(spanish), tmp_path / "s3", tmp_path / "e3.jsonl", DEVICE, server.target,
                                       bad), cwd=ROOT, stdout=out, stderr=out)
    assert wait_for(lambda: "refused this device's token" in (tmp_path / "bad.log").read_text(), 120)
    edge.send_signal(signal.SIGTERM)
    assert edge.wait(60) == 0
    assert "'pending': 1" in (tmp_path / "bad.log").read_text()
    # Missing token file: one line, non-zero exit, no traceback.
    proc = subprocess.run(daemon_cmd(str(spanish), tmp_path / "s4", tmp_path / "e4.jsonl", DEVICE, server.target,
                                     tmp_path / "missing.token"), cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "cannot read token file" in proc.stderr and "Traceback" not in proc.stderr
