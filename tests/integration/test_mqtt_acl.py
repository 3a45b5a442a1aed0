"""Broker hygiene: the deploy ACL and password workflow on a real Mosquitto. A device publishes only to its
own state/ack/results topics and reads only its fleet's and its own topics."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.properties import Properties

from testkit.servers import MosquittoServer
from testkit.wait import wait_until
from tests.prereq import require

pytestmark = pytest.mark.mqtt
ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "mosquitto"


class Client:
    """An MQTT v5 client that records PUBACK reason codes and received messages."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.pubacks: dict[int, Any] = {}
        self.connack: list[Any] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-{time.monotonic_ns()}",
                             protocol=mqtt.MQTTv5)
        self.c.username_pw_set(user, password)
        self.c.on_connect = lambda c, u, f, rc, p: self.connack.append(rc)
        self.c.on_message = lambda c, u, m: self.received.append((m.topic, bytes(m.payload)))
        self.c.on_publish = lambda c, u, mid, rc, p: self.pubacks.__setitem__(mid, rc)
        self.c.connect("127.0.0.1", port, clean_start=True)
        self.c.loop_start()
        wait_until(lambda: self.connack, what=f"CONNACK for {user}")

    @property
    def refused(self) -> bool:
        return self.connack[0].is_failure

    def publish(self, topic: str, payload: bytes = b"x", retain: bool = False) -> Any:
        info = self.c.publish(topic, payload, qos=1, retain=retain, properties=Properties(3))  # 3: PUBLISH
        wait_until(lambda: info.mid in self.pubacks, what=f"PUBACK for {topic}")
        return self.pubacks[info.mid]

    def subscribe(self, topic: str) -> None:
        self.c.subscribe(topic, qos=1)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture()
def secured(tmp_path: Path) -> Iterator[tuple[MosquittoServer, dict[str, str]]]:
    require(shutil.which("mosquitto_passwd") is not None, "mosquitto_passwd is not installed")
    conf = tmp_path / "conf"
    conf.mkdir()
    shutil.copy(DEPLOY / "acl", conf / "acl")
    env = {**os.environ, "PASSWD": str(conf / "passwd"), "ACL": str(conf / "acl"),
           "SECRETS": str(tmp_path / "s")}
    for args in (["device", "lab", "dev-a"], ["device", "lab", "dev-b"], ["device", "other", "dev-c"],
                 ["service", "fleet-operator"]):
        out = subprocess.run(["bash", str(DEPLOY / "provision.sh"), *args], env=env, capture_output=True,
                             text=True, check=True)
        assert "password written" in out.stdout
    passwords = {p.stem: p.read_text().strip() for p in (tmp_path / "s").iterdir()}
    for secret in passwords.values():  # the workflow never prints a password
        assert secret and secret not in out.stdout + out.stderr
    # Provisioning the same device twice is refused.
    again = subprocess.run(["bash", str(DEPLOY / "provision.sh"), "device", "lab", "dev-a"], env=env,
                           capture_output=True, text=True)
    assert again.returncode != 0 and "already provisioned" in again.stderr
    extra = f"allow_anonymous false\npassword_file {conf / 'passwd'}\nacl_file {conf / 'acl'}\n"
    server = MosquittoServer(tmp_path / "mosquitto", extra_conf=extra)
    server.start()
    yield server, passwords
    server.stop()


def test_device_cannot_touch_other_devices_topics(secured: tuple[MosquittoServer, dict[str, str]]) -> None:
    server, pw = secured
    assert Client(server.port, "dev-a", "wrong-password").refused
    assert Client(server.port, "nobody", "x").refused

    op = Client(server.port, "fleet-operator", pw["fleet-operator"])
    assert not op.refused
    op.subscribe("fleet/#")
    a = Client(server.port, "dev-a", pw["dev-a"])
    assert not a.refused
    lab, dev_a, dev_b = "fleet/lab", "fleet/lab/devices/dev-a", "fleet/lab/devices/dev-b"
    for t in (f"{lab}/config", f"{lab}/model", f"{dev_a}/config", f"{dev_b}/config", "fleet/other/config",
              f"{dev_b}/results", f"{dev_a}/results"):
        a.subscribe(t)
    time.sleep(0.2)  # let the SUBSCRIBEs reach the broker before the retained messages below

    # Its own topics: accepted and delivered.
    for leaf in ("state", "ack", "results"):
        assert not a.publish(f"{dev_a}/{leaf}", b"own").is_failure
    # Another device's topics and the desired-state topics: refused (v5 PUBACK "Not authorized").
    for topic in (f"{dev_b}/state", f"{dev_b}/ack", f"{dev_b}/results", f"{lab}/config", f"{lab}/model",
                  f"{dev_a}/config", f"{dev_a}/model"):
        rc = a.publish(topic, b"forged", retain=True)
        assert rc.is_failure and "authori" in str(rc).lower(), (topic, rc)
    wait_until(lambda: sum(1 for t, _ in op.received if t.startswith(dev_a)) == 3,
               what="own messages at the operator")
    assert not [t for t, p in op.received if p == b"forged"]  # nothing forged got through

    # Reading: its fleet's and its own topics, nobody else's.
    for topic in (f"{lab}/config", f"{dev_a}/config", f"{dev_b}/config", "fleet/other/config",
                  f"{dev_b}/results", f"{dev_a}/results"):
        assert not op.publish(topic, f"desired {topic}".encode(), retain=True).is_failure
    wanted = {f"{lab}/config", f"{dev_a}/config", f"{dev_a}/results"}
    wait_until(lambda: {t for t, p in a.received if p.startswith(b"desired")} >= wanted,
               what="dev-a's messages")
    time.sleep(0.3)  # a forbidden delivery would have arrived by now too
    assert {t for t, _ in a.received} == wanted
    for c in (op, a):
        c.close()


def test_device_cannot_join_another_fleet(secured: tuple[MosquittoServer, dict[str, str]]) -> None:
    """Issue 13, finding 7: with `fleet/+/devices/%u/...` patterns, dev-a of fleet lab could publish a retained
    online state and acks into fleet other (its controller counted it, its rollout was vetoed) and read other's
    canary message. Every device topic must name the device's own fleet literally."""
    server, pw = secured
    op = Client(server.port, "fleet-operator", pw["fleet-operator"])
    op.subscribe("fleet/#")
    a, c = Client(server.port, "dev-a", pw["dev-a"]), Client(server.port, "dev-c", pw["dev-c"])
    own, foreign = "fleet/lab/devices/dev-a", "fleet/other/devices/dev-a"
    readable = {"dev-a": {"fleet/lab/config", "fleet/lab/model", f"{own}/config", f"{own}/model", f"{own}/results"},
                "dev-c": {"fleet/other/config", "fleet/other/model", "fleet/other/devices/dev-c/config",
                          "fleet/other/devices/dev-c/model", "fleet/other/devices/dev-c/results"}}
    refused = {f"{foreign}/config", f"{foreign}/model", f"{foreign}/results", "fleet/other/config",
               "fleet/other/model", "fleet/other/devices/dev-c/model"}
    for t in readable["dev-a"] | refused:
        a.subscribe(t)
    for t in readable["dev-c"]:
        c.subscribe(t)
    time.sleep(0.2)  # let the SUBSCRIBEs reach the broker before the retained messages below

    # Writing: its own fleet's state/ack/results, never the same leaves under another fleet.
    for leaf in ("state", "ack", "results"):
        assert not a.publish(f"{own}/{leaf}", b"own").is_failure, leaf
        assert not c.publish(f"fleet/other/devices/dev-c/{leaf}", b"own").is_failure, leaf
        rc = a.publish(f"{foreign}/{leaf}", b"forged", retain=True)
        assert rc.is_failure and "authori" in str(rc).lower(), (leaf, rc)
    wait_until(lambda: sum(1 for _, p in op.received if p == b"own") == 6, what="own messages at the operator")
    assert not [t for t, p in op.received if p == b"forged"], op.received

    # Reading: the desired state of its own fleet and its own per-device topics; nothing of fleet other.
    for topic in sorted(readable["dev-a"] | readable["dev-c"] | refused):
        assert not op.publish(topic, f"desired {topic}".encode(), retain=True).is_failure, topic
    def delivered(client: Client) -> set[str]:
        return {t for t, p in client.received if p.startswith(b"desired")}

    wait_until(lambda: delivered(a) >= readable["dev-a"] and delivered(c) >= readable["dev-c"],
               what="each device's own messages")
    time.sleep(0.3)  # a forbidden delivery would have arrived by now too
    assert {t for t, _ in a.received} == readable["dev-a"]
    assert {t for t, _ in c.received} == readable["dev-c"]
    for cl in (op, a, c):
        cl.close()


def test_provision_keeps_passwords_off_argv_and_the_broker_accepts_them(tmp_path: Path) -> None:
    real = shutil.which("mosquitto_passwd")
    require(real is not None, "mosquitto_passwd is not installed")
    # A wrapper on PATH records every mosquitto_passwd command line (what `ps` would show), then runs the real one.
    shim, argv_log = tmp_path / "bin", tmp_path / "argv.log"
    shim.mkdir()
    (shim / "mosquitto_passwd").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{argv_log}"\nexec {real} "$@"\n')
    (shim / "mosquitto_passwd").chmod(0o755)
    conf = tmp_path / "conf"
    conf.mkdir()
    shutil.copy(DEPLOY / "acl", conf / "acl")
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "PASSWD": str(conf / "passwd"),
           "ACL": str(conf / "acl"), "SECRETS": str(tmp_path / "s")}
    for args in (["device", "lab", "dev-a"], ["service", "cloud-service"]):
        subprocess.run(["bash", str(DEPLOY / "provision.sh"), *args], env=env, capture_output=True, text=True,
                       check=True)
    passwords = {p.stem: p.read_text().strip() for p in (tmp_path / "s").iterdir()}
    calls = argv_log.read_text().splitlines()
    assert len(calls) == 2 and not any(" -b " in f" {c} " for c in calls), calls
    assert not any(pw in c for pw in passwords.values() for c in calls)
    assert stat.S_IMODE((conf / "passwd").stat().st_mode) == 0o600
    assert all(line.split(":", 1)[1].startswith("$7$") for line in (conf / "passwd").read_text().splitlines())

    extra = f"allow_anonymous false\npassword_file {conf / 'passwd'}\nacl_file {conf / 'acl'}\n"
    server = MosquittoServer(tmp_path / "mosquitto", extra_conf=extra)
    server.start()
    try:
        for user, password in passwords.items():
            ok, bad = Client(server.port, user, password), Client(server.port, user, password + "x")
            assert not ok.refused and bad.refused, user
            ok.close()
            bad.close()
    finally:
        server.stop()
