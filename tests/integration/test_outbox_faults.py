"""`edge-node run` as a user meets its outbox's failure modes (issue 13, finding 8), black box: the real daemon
process on real speech, with no cloud to answer (none of these cases gets that far).

A wrong key, an unwritable state directory, a full disk at start-up and a zero-sized outbox are each one line on
stderr and exit 2, never a traceback; a disk that fills up mid-run costs the escalation, never the edge's text.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from testkit.escalation import ROOT, daemon_cmd, daemon_env, file_size_limit, read_events, run_daemon, tally
from testkit.servers import free_port
from testkit.wait import wait_for
from tests.audio_fixtures import data_prompts

pytestmark = [pytest.mark.faults, pytest.mark.slow]

DEVICE = "edge-faults"


@pytest.fixture(scope="module")
def spanish() -> Path:
    """A Spanish prompt (tests/data): the English-only model doubts it, so the daemon escalates it."""
    return data_prompts("es")[0].wav


@pytest.fixture()
def dead_cloud(tmp_path: Path) -> tuple[str, Path]:
    """An address nothing listens on, and a token file for it: escalations stay in the outbox."""
    token = tmp_path / "token"
    token.write_text(f"{DEVICE}.not-a-real-token")
    token.chmod(0o600)
    return f"127.0.0.1:{free_port()}", token


def _key(path: Path, byte: int) -> Path:
    path.write_text(bytes([byte]).hex() * 32 + "\n")
    path.chmod(0o600)
    return path


def _refused(cmd: list[str], **kwargs: object) -> str:
    """Run the daemon, expect a start-up refusal: exit 2, one `error:` line, no traceback. Returns stderr."""
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
                          **kwargs)  # type: ignore[call-overload]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len([ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]) == 1, proc.stderr[-3000:]
    return str(proc.stderr)


def test_a_wrong_outbox_key_is_refused_at_start_and_the_outbox_kept(
    spanish: Path, dead_cloud: tuple[str, Path], edge_artifact: Path, tmp_path: Path
) -> None:
    cloud, token = dead_cloud
    state, events = tmp_path / "state", tmp_path / "events.jsonl"
    right = _key(tmp_path / "right.key", 1)
    # The device was offline: its escalation waits in the outbox when it is stopped.
    log = (tmp_path / "edge.log").open("ab")
    edge = subprocess.Popen(daemon_cmd(str(spanish), state, events, DEVICE, cloud, token,
                                       ("--outbox-key-file", str(right))), cwd=ROOT, stdout=log, stderr=log)
    try:
        assert wait_for(lambda: tally(read_events(events))[0], 120), (tmp_path / "edge.log").read_text()[-3000:]
        edge.send_signal(signal.SIGTERM)
        assert edge.wait(60) == 0
    finally:
        if edge.poll() is None:
            edge.kill()
    # Restarted with another (well-formed) key: refused at once, not a dead sender thread and a hang.
    wrong = _key(tmp_path / "wrong.key", 2)
    err = _refused(daemon_cmd(str(spanish), state, events, DEVICE, cloud, token, ("--outbox-key-file", str(wrong))))
    assert str(wrong) in err and "another key" in err
    # A malformed key and one that cannot be read: the same kind of line.
    (tmp_path / "short.key").write_text("abc")
    err = _refused(daemon_cmd(str(spanish), state, events, DEVICE, cloud, token,
                              ("--outbox-key-file", str(tmp_path / "short.key"))))
    assert "32 raw bytes or 64 hex characters" in err
    err = _refused(daemon_cmd(str(spanish), state, events, DEVICE, cloud, token,
                              ("--outbox-key-file", str(tmp_path))))
    assert "cannot read outbox key" in err
    # The refusals changed nothing: with the right key (and no cloud) the escalation is still there.
    log_text = tmp_path / "right.log"
    assert run_daemon(daemon_cmd(str(spanish), state, events, DEVICE, extra=("--outbox-key-file", str(right))),
                      log_text) == 0
    assert "'pending': 1" in log_text.read_text(), log_text.read_text()[-3000:]


@contextmanager
def _read_only_dir(path: Path) -> Iterator[Path]:
    """An existing directory this process cannot create files in. Tests run as root, which ignores mode bits, so
    as root the directory is made immutable (`chattr +i`: not even root may add an entry). Where that is not
    possible (no CAP_LINUX_IMMUTABLE, as in a default Docker container; a file system without the flag) the
    directory is /sys/fs instead: sysfs lets no one create files, and containers mount it read-only."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    try:
        immutable = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False).returncode == 0
    except FileNotFoundError:  # no e2fsprogs
        immutable = False
    if not immutable:
        yield Path("/sys/fs")
        return
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_an_unwritable_state_dir_is_one_line(spanish: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("a regular file, not a directory")
    err = _refused(daemon_cmd(str(spanish), tmp_path / "a-file" / "state", tmp_path / "e.jsonl", DEVICE))
    assert "--state-dir" in err and "a-file" in err
    with _read_only_dir(tmp_path / "ro") as ro:
        err = _refused(daemon_cmd(str(spanish), ro, tmp_path / "e.jsonl", DEVICE))
        assert "--state-dir" in err and str(ro) in err


def test_a_full_disk_at_start_is_one_line(spanish: Path, tmp_path: Path) -> None:
    # 16 KiB per file: the key (65 bytes) fits, the outbox's schema (~40 KB of WAL) does not.
    err = _refused(daemon_cmd(str(spanish), tmp_path / "state", tmp_path / "e.jsonl", DEVICE),
                   env=daemon_env(measure_coverage=False), preexec_fn=file_size_limit(16 * 1024))
    assert "outbox" in err and "disk" in err


def test_a_disk_full_mid_run_keeps_the_edge_text(
    spanish: Path, dead_cloud: tuple[str, Path], edge_artifact: Path, tmp_path: Path
) -> None:
    cloud, token = dead_cloud
    events, log = tmp_path / "events.jsonl", tmp_path / "edge.log"
    # 96 KiB per file: the outbox opens (~62 KB of WAL), the events and the log fit, but the escalation (the
    # segment's audio as PCM16, ~80 KB) does not: the first write to the outbox fails as on a full disk.
    cmd = daemon_cmd(str(spanish), tmp_path / "state", events, DEVICE, cloud, token, ("--wire", "pcm16"))
    assert run_daemon(cmd, log, timeout=180, max_file_bytes=96 * 1024) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text and "cannot rollback" not in text, text[-3000:]
    evs = read_events(events)
    segments = [e for e in evs if e["type"] == "segment"]
    failed = [e for e in evs if e["type"] == "escalation_failed"]
    assert segments and all(e["text"] and e["final"] for e in segments), evs  # the transcript is out, and final
    assert {e["segment_id"] for e in failed} == {e["segment_id"] for e in segments}, evs
    assert all("outbox" in e["reason"] for e in failed), failed
    assert f"'outbox_write_failed': {len(segments)}" in text, text[-3000:]


@pytest.mark.parametrize("flag", [("--outbox-max-entries", "0"), ("--outbox-max-entries", "-5"), ("--timeout", "0")])
def test_out_of_range_outbox_and_sender_flags_are_refused(
    flag: tuple[str, str], spanish: Path, dead_cloud: tuple[str, Path], tmp_path: Path
) -> None:
    cloud, token = dead_cloud
    proc = subprocess.run(daemon_cmd(str(spanish), tmp_path / "state", tmp_path / "e.jsonl", DEVICE, cloud, token,
                                     flag), cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"argument {flag[0]}" in proc.stderr and flag[1] in proc.stderr
    assert not (tmp_path / "state").exists()  # refused before anything was started or written
