"""The real daemon under the real control plane: a threshold pushed with `fleetctl config set` over Mosquitto
changes how the very next file's segments are handled, with no restart."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.asterisk import available, prompts
from shared.signing import init_keypair
from testkit.escalation import ROOT, daemon_cmd, read_events
from testkit.servers import MosquittoServer, RedisServer, free_port
from testkit.wait import wait_for
from tests.prereq import require

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


def test_live_threshold_change_applies_to_next_file(tmp_path: Path) -> None:
    require(available("en") and (ROOT / "models" / "tiny.en-int8").exists(), "Asterisk prompts or models missing")
    broker, redis = MosquittoServer(tmp_path / "mq"), RedisServer(tmp_path / "redis")
    broker.start()
    redis.start()
    priv, pub = init_keypair(tmp_path / "keys")
    inbox, events = tmp_path / "inbox", tmp_path / "events.jsonl"
    inbox.mkdir()
    token = tmp_path / "token"
    token.write_text("dev-1.unused")
    # A cloud that is not there: escalations wait in the outbox, which is all this test looks at.
    cmd = daemon_cmd(str(inbox), tmp_path / "state", events, "dev-1", f"127.0.0.1:{free_port()}", token,
                     extra=("--mqtt", f"127.0.0.1:{broker.port}", "--fleet", "lab", "--operator-pubkey", str(pub)))
    log = (tmp_path / "edge.log").open("ab")
    edge = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        clean = [p for p in prompts("en", min_words=4)][:2]
        shutil.copy(clean[0].wav, inbox / "a.wav")
        assert wait_for(lambda: any(e["type"] == "segment" for e in read_events(events)), 120)
        first = [e for e in read_events(events) if e["type"] == "segment"]
        assert all(e["final"] for e in first), first  # clean English: confident, not escalated

        fleetctl = [sys.executable, "-m", "fleetctl", "config", "set", "thresholds.confidence=1.0",
                    "--broker", f"127.0.0.1:{broker.port}", "--fleet", "lab", "--redis", redis.url,
                    "--key", str(priv)]
        out = subprocess.run(fleetctl, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        # The agent persists a config once it has accepted it (and acked): then the next segment must obey it.
        assert wait_for(lambda: (tmp_path / "state" / "agent" / "config.json").exists(), 30)
        shutil.copy(clean[1].wav, inbox / "b.wav")
        assert wait_for(lambda: len([e for e in read_events(events) if e["type"] == "segment"]) > len(first), 120)
        second = [e for e in read_events(events) if e["type"] == "segment"][len(first):]
        assert second and not any(e["final"] for e in second), second  # everything below 1.0 escalates now
        assert edge.poll() is None  # no restart
    finally:
        edge.send_signal(signal.SIGTERM)
        edge.wait(60)
        broker.stop()
        redis.stop()
