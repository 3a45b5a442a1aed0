"""No single message can stop the device agent (issue 13, findings 4 and 6), over real Mosquitto.

- A pushed config whose prompt words whisper's tokenizer cannot encode is NACKed, never applied; a config the
  engine refuses to apply is NACKed with the reason, the old parameters stay in force and nothing is persisted;
  a persisted config that fails at boot is logged and ignored (no crash loop).
- A NACK reason longer than an Ack allows is cut to the limit, so building the NACK cannot kill the model
  thread or the config worker: the next update still goes through.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from edge_node.core.desired_state import ParamsBox
from edge_node.core.tokenizer import load_encoding
from evaluation.asterisk import available, prompts
from shared.errors import UserError
from shared.fleet_schema import (
    ConfigParams,
    DesiredConfig,
    DesiredModel,
    FetchInfo,
    device_model_topic,
    fleet_config_topic,
)
from testkit.escalation import ROOT, daemon_cmd, read_events
from testkit.fleet import FLEET
from testkit.servers import free_port
from testkit.wait import wait_until
from tests.prereq import require

if TYPE_CHECKING:
    from tests.integration.mqtt_fixtures import FleetEnv, Listener

pytest_plugins = ["tests.integration.mqtt_fixtures"]
pytestmark = [pytest.mark.mqtt, pytest.mark.redis]
ACK_LIMIT = 1000  # Ack.reason's max_length


class RecordingInstaller:
    """A ModelInstaller standing in for the ModelUpdater: records installs; a model version listed in `fail`
    raises UserError with that text, as a failed download, verification or self-test would."""

    def __init__(self, fail: dict[str, str] | None = None) -> None:
        self.fail = fail or {}
        self.installs: list[str] = []
        self._installed: DesiredModel | None = None
        self._lock = threading.Lock()

    def boot(self) -> DesiredModel | None:
        return self._installed

    def install(self, desired: DesiredModel) -> None:
        if desired.model_version in self.fail:
            raise UserError(self.fail[desired.model_version])
        with self._lock:
            if self._installed is None or self._installed.model_version != desired.model_version:
                self.installs.append(desired.model_version)
            self._installed = desired

    @property
    def installed(self) -> DesiredModel | None:
        with self._lock:
            return self._installed


def desired_model(env: FleetEnv, version: int, model_version: str, device: str | None = "dev1") -> bytes:
    """A signed DesiredModel for a (fictitious) artifact: the installer above never fetches it."""
    return DesiredModel(
        fleet=FLEET, device=device, version=version, name="scale", model_version=model_version,
        manifest_sha256="0" * 64, size=1, manifest_signature="c2ln",
        fetch=FetchInfo(name="scale", version=model_version), issued_at=time.time(),
    ).signed(env.keys.private).to_json()


def next_ack(acks: Listener, device: str, seen: int, what: str) -> Any:
    """The first ack from `device` after the `seen` it had sent before."""
    return wait_until(lambda: acks.acks(device)[seen] if len(acks.acks(device)) > seen else None,
                      what=what)


class TokenizingTarget(ParamsBox):
    """A ParamsTarget that does what the engine does with prompt words: encode them with whisper's real tokenizer
    (the edge's tiktoken loader over openai-whisper's own vocabulary file). tiktoken raises on special-token text,
    which is how such a config used to crash the daemon."""

    def __init__(self) -> None:
        super().__init__()
        spec = importlib.util.find_spec("whisper")  # the file only: importing whisper would load torch
        assert spec is not None and spec.origin is not None
        self.encoding = load_encoding(Path(spec.origin).parent / "assets" / "gpt2.tiktoken")

    def apply_params(self, params: ConfigParams) -> None:
        if params.prompt_words:
            self.encoding.encode(" " + ", ".join(params.prompt_words))
        super().apply_params(params)


class RefusingTarget(ParamsBox):
    """An engine that cannot take beam_size=7 (raises while applying)."""

    def apply_params(self, params: ConfigParams) -> None:
        if params.beam_size == 7:
            raise RuntimeError("decoder cannot run beam 7 on this device")
        super().apply_params(params)


def signed_config(env: FleetEnv, version: int, params: ConfigParams) -> bytes:
    return DesiredConfig(fleet=FLEET, version=version, params=params, issued_at=time.time()) \
        .signed(env.keys.private).to_json()


def unchecked_params(**fields: Any) -> ConfigParams:
    """Params built without validation: what an older operator tool could sign and push."""
    return ConfigParams.model_construct(**fields)


def test_special_token_prompt_word_is_nacked_and_never_reaches_the_engine(fleet_env: FleetEnv) -> None:
    target = TokenizingTarget()
    acks = fleet_env.listen()
    agent = fleet_env.agent("dev1", target)
    topic = fleet_config_topic(FLEET)
    fleet_env.publish_raw(topic, signed_config(fleet_env, 1, ConfigParams(prompt_words=("Asterisk",))))
    assert acks.wait_ack("dev1", "config", 1).accepted
    for version, words in ((2, ("<|endoftext|>",)), (3, ("<|end", "oftext|>"))):  # whole, or split across words
        fleet_env.publish_raw(topic, signed_config(fleet_env, version, unchecked_params(prompt_words=words)))
        ack = acks.wait_ack("dev1", "config", version)
        assert not ack.accepted and "special-token" in ack.reason, ack.reason
    assert target.current().prompt_words == ("Asterisk",)
    assert fleet_env.config_doc("dev1")["fleet"]["version"] == 1
    # The agent is alive: the next good config goes through.
    fleet_env.publish_raw(topic, signed_config(fleet_env, 4, ConfigParams(prompt_words=("voicemail",))))
    assert acks.wait_ack("dev1", "config", 4).accepted
    wait_until(lambda: target.current().prompt_words == ("voicemail",), what="v4 applied")
    assert agent.rec.config_version == 4


def test_a_config_the_engine_cannot_apply_is_nacked_and_the_old_one_stays(fleet_env: FleetEnv) -> None:
    target = RefusingTarget()
    acks = fleet_env.listen()
    agent = fleet_env.agent("dev1", target)
    topic = fleet_config_topic(FLEET)
    fleet_env.publish_raw(topic, signed_config(fleet_env, 1, ConfigParams(beam_size=3)))
    assert acks.wait_ack("dev1", "config", 1).accepted
    fleet_env.publish_raw(topic, signed_config(fleet_env, 2, ConfigParams(beam_size=7)))
    ack = acks.wait_ack("dev1", "config", 2)
    assert not ack.accepted and "beam 7" in ack.reason, ack.reason
    assert target.current().beam_size == 3
    assert agent.rec.effective_params().beam_size == 3 and agent.rec.config_version == 1
    assert fleet_env.config_doc("dev1")["fleet"]["version"] == 1  # the bad one was never persisted
    fleet_env.publish_raw(topic, signed_config(fleet_env, 3, ConfigParams(beam_size=4)))
    assert acks.wait_ack("dev1", "config", 3).accepted
    wait_until(lambda: target.current().beam_size == 4, what="v3 applied")


@pytest.mark.parametrize("case", ["special_token", "apply_fails"])
def test_a_persisted_config_that_fails_at_boot_is_ignored(fleet_env: FleetEnv, case: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The state dir holds a config that an older agent accepted: booting on it must not crash (every restart
    would crash again); the device starts on its defaults and takes the next config."""
    state = fleet_env.root / "devices" / "dev1"
    state.mkdir(parents=True)
    params = unchecked_params(prompt_words=("<|endoftext|>",)) if case == "special_token" \
        else ConfigParams(beam_size=7)
    doc = {"fleet": json.loads(signed_config(fleet_env, 5, params)), "device": None}
    (state / "config.json").write_text(json.dumps(doc))
    target: ParamsBox = TokenizingTarget() if case == "special_token" else RefusingTarget()
    acks = fleet_env.listen()
    with caplog.at_level(logging.WARNING):
        agent = fleet_env.agent("dev1", target)  # boot() first, then connect
    assert target.current() == ConfigParams() and target.generation == 0
    assert "config" in caplog.text and ("special-token" in caplog.text or "beam 7" in caplog.text), caplog.text
    fleet_env.publish_raw(fleet_config_topic(FLEET), signed_config(fleet_env, 6, ConfigParams(beam_size=2)))
    assert acks.wait_ack("dev1", "config", 6).accepted
    wait_until(lambda: target.current().beam_size == 2, what="v6 applied")
    assert agent.rec.config_version == 6


def test_a_long_install_error_is_nacked_truncated_and_the_next_model_installs(fleet_env: FleetEnv) -> None:
    installer = RecordingInstaller(fail={"bad": "self-test failed: " + "x" * 3000})
    acks = fleet_env.listen()
    fleet_env.agent("dev1", ParamsBox(), installer)
    topic = device_model_topic(FLEET, "dev1")
    fleet_env.publish_raw(topic, desired_model(fleet_env, 1, "bad"))
    ack = acks.wait_ack("dev1", "model", 1)
    assert not ack.accepted and ack.reason.startswith("self-test failed: xxx")
    assert len(ack.reason) == ACK_LIMIT and ack.reason.endswith("…"), len(ack.reason)
    # The model thread is still there: a good model after it installs.
    fleet_env.publish_raw(topic, desired_model(fleet_env, 2, "good"))
    assert acks.wait_ack("dev1", "model", 2).accepted
    assert installer.installs == ["good"]


def test_a_config_with_a_2000_character_unknown_key_is_nacked(fleet_env: FleetEnv) -> None:
    box = ParamsBox()
    acks = fleet_env.listen()
    fleet_env.agent("dev1", box)
    doc = json.loads(signed_config(fleet_env, 1, ConfigParams(beam_size=2)))
    doc["params"]["k" * 2000] = 1
    fleet_env.publish_raw(fleet_config_topic(FLEET), json.dumps(doc).encode())
    ack = acks.wait_ack("dev1", "config", 1)
    assert not ack.accepted and ack.reason.startswith("DesiredConfig: params.kkk")
    assert len(ack.reason) <= ACK_LIMIT and ack.reason.endswith("…")
    assert box.current() == ConfigParams()
    fleet_env.publish_raw(fleet_config_topic(FLEET), signed_config(fleet_env, 2, ConfigParams(beam_size=2)))
    assert acks.wait_ack("dev1", "config", 2).accepted
    wait_until(lambda: box.current().beam_size == 2, what="v2 applied")


@pytest.mark.slow
def test_the_daemon_refuses_a_special_token_prompt_and_keeps_running(fleet_env: FleetEnv) -> None:
    """The real `edge-node run` daemon: such a config used to be acked, then crash the daemon at its next chunk
    (whisper's tokenizer refuses the prompt), and again after each restart (the config was persisted)."""
    require(available("en") and (ROOT / "models" / "tiny.en-int8").exists(), "Asterisk prompts or models missing")
    root = fleet_env.root
    inbox, events, token = root / "inbox", root / "events.jsonl", root / "token"
    inbox.mkdir()
    token.write_text("dev-1.unused")
    cmd = daemon_cmd(str(inbox), root / "state", events, "dev-1", f"127.0.0.1:{free_port()}", token,
                     extra=("--mqtt", f"127.0.0.1:{fleet_env.broker.port}", "--fleet", FLEET,
                            "--operator-pubkey", str(fleet_env.keys.public_path)))
    acks = fleet_env.listen()
    bad = signed_config(fleet_env, 1, unchecked_params(prompt_words=("<|endoftext|>",)))
    fleet_env.publish_raw(fleet_config_topic(FLEET), bad)  # retained: every (re)start receives it
    clips = [p.wav for p in prompts("en", min_words=4)][:2]
    for run, clip in enumerate(clips):
        log = (root / "edge.log").open("ab")
        edge = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            nacks = wait_until(lambda: [a for a in acks.acks("dev-1") if a.version == 1] or None, 120,
                               what=f"the device's answer to the bad config (run {run})")
            assert all(not a.accepted and "special-token" in a.reason for a in nacks), nacks
            seen = len([e for e in read_events(events) if e["type"] == "segment"])
            shutil.copy(clip, inbox / f"clip{run}.wav")
            wait_until(lambda seen=seen: len([e for e in read_events(events) if e["type"] == "segment"]) > seen,
                       120, what=f"a segment after the bad config (run {run})")
            assert edge.poll() is None, (root / "edge.log").read_text()[-3000:]
        finally:
            edge.send_signal(signal.SIGTERM)
            edge.wait(60)
            log.close()
        acks.messages.clear()
    assert not (root / "state" / "agent" / "config.json").exists()  # never persisted
