"""The `make demo` launcher's plumbing, without models (the full demo takes about a minute; the pieces it starts
are tested elsewhere): the broker it provisions, the device tokens it writes, and how it follows event files."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from scripts.demo_monitor import Console, EventTail, FileInfo, Record
from scripts.demo_topology import Broker, register_device, start_redis
from testkit.wait import wait_until
from tests.prereq import require

pytestmark = [pytest.mark.mqtt, pytest.mark.redis]


def _connect(port: int, user: str, password: str) -> bool:
    """True when the broker accepts the credentials."""
    import paho.mqtt.client as mqtt

    result: list[bool] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{user}")
    c.username_pw_set(user, password)
    c.on_connect = lambda cl, u, f, rc, p: result.append(not rc.is_failure)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        wait_until(lambda: result, what=f"CONNACK for {user}")
    finally:
        c.disconnect()
        c.loop_stop()
    return result[0]


def test_broker_and_tokens(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    require(shutil.which("mosquitto_passwd") is not None, "mosquitto_passwd is not installed")
    broker = Broker(tmp_path, "demo", ("edge-1", "edge-2"))
    broker.provision()
    port = broker.start()
    redis = start_redis(tmp_path)
    try:
        assert set(broker.passwords) == {"edge-1", "edge-2", "fleet-operator", "fleet-controller", "cloud-service"}
        for path in broker.passwords.values():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert _connect(port, "edge-1", broker.passwords["edge-1"].read_text().strip())
        assert not _connect(port, "edge-1", "wrong")
        assert not _connect(port, "nobody", "x")
        acl = (tmp_path / "mosquitto" / "acl").read_text()
        assert "user edge-2\ntopic read fleet/demo/config" in acl

        token_file = tmp_path / "edge-1.token"
        register_device(redis.url, "edge-1", token_file)
        token = token_file.read_text().strip()
        assert token.startswith("edge-1.") and stat.S_IMODE(token_file.stat().st_mode) == 0o600
        out = capfd.readouterr()
        assert token not in out.out + out.err  # written to the file only
    finally:
        broker.stop()
        redis.stop()


def test_event_tail_reads_whole_lines_and_tallies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = tmp_path / "events.jsonl"
    record = Record()
    record.files["abcd"] = FileInfo("edge-1", "es-clean-vm-goodbye", "Adios", 1, "es")
    tail = EventTail({"edge-1": events}, record, Console())
    seg = {"type": "segment", "segment_id": "edge-1-abcd-500", "text": "adi os", "confidence": 0.1, "final": False}
    line = json.dumps(seg).encode() + b"\n"
    events.write_bytes(line[:20])  # the daemon is mid-write: nothing parsed yet
    tail.poll()
    assert record.segments == []
    with events.open("ab") as f:
        f.write(line[20:])
    tail.poll()
    assert [s["segment_id"] for s in record.segments] == ["edge-1-abcd-500"]
    assert record.pending_revisions() == ["edge-1-abcd-500"]
    revision = json.dumps({"type": "revision", "segment_id": "edge-1-abcd-500", "text": "Adiós", "language": "es"},
                          ensure_ascii=False).encode() + b"\n"
    cut = revision.index("ó".encode()) + 1  # mid-character
    with events.open("ab") as f:
        f.write(revision[:cut])
    tail.poll()
    assert record.pending_revisions() == ["edge-1-abcd-500"]
    with events.open("ab") as f:
        f.write(revision[cut:])
    tail.poll()
    assert record.pending_revisions() == []
    shown = capsys.readouterr().out
    assert "es-clean-vm-goodbye" in shown and "ESCALATED" in shown and '"Adiós"  lang es' in shown
