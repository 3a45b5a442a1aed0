"""`make compose-test`: the real stack, end to end, as deployed (docker-compose.yml, TLS, tokens, ACL, signed).

The steps run in order on one stack (module fixture): services healthy -> an escalation answered -> a config
acked by every edge -> a model rolled out to every edge from the cloud's FetchModel -> the cloud killed mid-
escalation and restarted with every escalation answered exactly once -> `fleetctl status` shows it all.
Only collected when WHISPER_FLEET_COMPOSE=1 (scripts/docker/compose-test.sh sets it, after building the images).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.manifest import MANIFEST_NAME, SIGNATURE_NAME, read_manifest, write_manifest
from shared.signing import load_private_key
from tests.compose.stack import EDGES, INFRA, ROOT, SCRAPE_TARGETS, Stack, env_for, wait

pytestmark = pytest.mark.compose
SOUNDS = Path("/usr/share/asterisk/sounds")
ENGLISH = [SOUNDS / "en" / "demo-congrats.wav"]
FIRST_FOREIGN = [SOUNDS / "es" / "agent-incorrect.wav"]
# Distinct recordings: an edge skips a file whose content it has processed already (sources.file_key).
FOREIGN = [SOUNDS / lang / f"agent-{name}.wav" for lang in ("es", "fr") for name in ("loginok", "newlocation")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prepare(work: Path) -> None:
    """This run's model and sample folders: the cloud's (base + the artifact FetchModel serves), the edges'."""
    for sub in ("cloud-models", "edge-models", "samples"):
        shutil.rmtree(work / sub, ignore_errors=True)
    (work / "cloud-models").mkdir(parents=True)
    try:
        os.link(ROOT / "models" / "base.pt", work / "cloud-models" / "base.pt")
    except OSError:
        shutil.copy2(ROOT / "models" / "base.pt", work / "cloud-models" / "base.pt")
    for dest in ("cloud-models", "edge-models"):
        shutil.copytree(ROOT / "models" / "tiny.en-int8", work / dest / "tiny.en-int8")
    for edge in EDGES:
        (work / "samples" / edge).mkdir(parents=True)


def _script(name: str, env: dict[str, str], *args: str) -> None:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / name), *args], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    for clip in ENGLISH + FIRST_FOREIGN + FOREIGN:
        assert clip.is_file(), f"{clip} missing: make setup installs the Asterisk prompts"
    work = ROOT / ".cache" / "compose"
    ports = {"FLEET_GRPC_PORT": _free_port(), "FLEET_MQTT_PORT": _free_port(), "FLEET_REDIS_PORT": _free_port(),
             "FLEET_PROMETHEUS_PORT": _free_port()}
    st = Stack(project="whisper-fleet-test", work=work, env=env_for(work, ports))
    st.compose("down", "-v", "--remove-orphans", check=False)
    _prepare(work)
    _script("make-secrets.sh", {**st.env, "SECRETS_DIR": str(st.secrets)}, "--force")  # this run's ports
    st.timeline.mark("secrets and certificates made; compose up")
    try:
        st.compose("up", "-d", *INFRA)
        st.wait_healthy(INFRA)
        st.timeline.mark(f"healthy: {', '.join(INFRA)}")
        _script("register-devices.sh", {**st.env, "SECRETS_DIR": str(st.secrets)})
        st.compose("up", "-d", *EDGES)
        st.wait_healthy(EDGES)
        wait(lambda: all(s.get("online") for s in st.status().values()) and len(st.status()) == len(EDGES),
             120, lambda: f"edges not online: {st.status()}")
        st.timeline.mark(f"healthy and online: {', '.join(EDGES)}")
        yield st
    finally:
        print("\n".join(["", "compose-test timeline:", *st.timeline.lines]), flush=True)
        (work / "timeline.txt").write_text("\n".join(st.timeline.lines) + "\n")
        (work / "logs.txt").write_text(st.logs(tail=400))
        st.compose("down", "-v", "--remove-orphans", check=False)


def _escalations(events: list[dict[str, Any]]) -> tuple[set[str], Counter[str]]:
    escalated = {e["segment_id"] for e in events if e["type"] == "segment" and not e["final"]}
    revisions = Counter(e["segment_id"] for e in events if e["type"] == "revision")
    return escalated, revisions


def _all_answered(stack: Stack) -> bool:
    for edge in EDGES:
        escalated, revisions = _escalations(stack.events(edge))
        if not escalated or not escalated <= set(revisions):
            return False
    return True


def test_escalation_answered(stack: Stack) -> None:
    for edge in EDGES:
        stack.feed(edge, ENGLISH + FIRST_FOREIGN, "first")
    wait(lambda: _all_answered(stack), 300, lambda: f"unanswered escalations: {stack.logs(*EDGES)}")
    for edge in EDGES:
        events = stack.events(edge)
        escalated, revisions = _escalations(events)
        langs = {e["language"] for e in events if e["type"] == "revision"}
        assert "es" in langs, f"{edge}: the Spanish segment's revision says {langs}"
        assert all(n == 1 for n in revisions.values()), revisions
        english = [e["text"] for e in events if e["type"] == "segment" and e["final"]]
        assert any("congratulations" in t.lower() for t in english), english
    stack.timeline.mark(f"escalations answered: {len(escalated)} per edge, revision language es")


def _targets_up(stack: Stack) -> dict[str, list[str]]:
    jobs: dict[str, list[str]] = {}
    for t in stack.prometheus("/api/v1/targets", state="active")["activeTargets"]:
        jobs.setdefault(t["labels"]["job"], []).append(t["health"])
    return jobs


def _query(stack: Stack, expr: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = stack.prometheus("/api/v1/query", query=expr)["result"]
    return result


def test_prometheus_scrapes_every_process(stack: Stack) -> None:
    # Runs after test_escalation_answered: the cloud has answered Transcribe calls, each edge has escalated.
    wait(lambda: {j: h.count("up") for j, h in _targets_up(stack).items()} == SCRAPE_TARGETS, 120,
         lambda: f"targets not all up: {_targets_up(stack)}")
    ok = 'sum(asr_grpc_requests_total{job="cloud",method="Transcribe",code="OK"})'
    wait(lambda: any(float(r["value"][1]) > 0 for r in _query(stack, ok)), 60,
         lambda: f"{ok}: {_query(stack, ok)}")
    esc = 'edge_escalated_total{job="edge"}'
    wait(lambda: len([r for r in _query(stack, esc) if float(r["value"][1]) > 0]) == len(EDGES), 60,
         lambda: f"{esc}: {_query(stack, esc)}")
    devices = {r["metric"]["device"] for r in _query(stack, 'asr_escalations_total{job="cloud"}')}
    assert set(EDGES) <= devices, devices
    served = float(_query(stack, ok)[0]["value"][1])
    stack.timeline.mark(f"prometheus: every target up {SCRAPE_TARGETS}; cloud Transcribe OK = {served:.0f}; "
                        f"escalations by device {sorted(devices)}")


def test_config_acked_by_every_edge(stack: Stack) -> None:
    out = stack.fleetctl("config", "set", "beam_size=2", *stack.broker_args())
    version = int(re.search(r"published config v(\d+)", out).group(1))  # type: ignore[union-attr]
    wait(lambda: all(s.get("config_version") == version for s in stack.status().values()), 120,
         lambda: f"config v{version} not acked: {stack.status()}")
    stack.timeline.mark(f"config v{version} (beam_size=2) acked by {', '.join(EDGES)}")


def _new_version(directory: Path, version: str) -> None:
    """Re-issue the artifact in place under a new version, signed with the operator key (no rebuild needed)."""
    raw = json.loads((directory / MANIFEST_NAME).read_text())
    meta = {k: v for k, v in raw.items() if k not in ("schema", "files")}
    (directory / MANIFEST_NAME).unlink()
    (directory / SIGNATURE_NAME).unlink()
    write_manifest(directory, {**meta, "version": version}, load_private_key(ROOT / "keys" / "operator.key"))


def test_model_rolled_out_to_every_edge(stack: Stack) -> None:
    before = {d: s.get("model_version") for d, s in stack.status().items()}
    artifact = stack.work / "cloud-models" / "tiny.en-int8"
    new = f"{read_manifest(artifact).version}-r2"
    _new_version(artifact, new)
    stack.timeline.mark(f"model publish {new} --canary 50% --then all (before: {before})")
    out = stack.fleetctl("model", "publish", str(artifact), "--canary", "50%", "--then", "all",
                         "--timeout", "300", "--no-progress", *stack.broker_args())
    after = {d: s.get("model_version") for d, s in stack.status().items()}
    assert after == {d: new for d in EDGES}, f"{out}\nafter: {after}"
    stack.timeline.mark(f"model {new} serving on every edge (after: {after})")


def _segments(stack: Stack) -> dict[str, int]:
    return {e: sum(1 for ev in stack.events(e) if ev["type"] == "segment") for e in EDGES}


def _unanswered(stack: Stack) -> dict[str, set[str]]:
    out = {}
    for edge in EDGES:
        escalated, revisions = _escalations(stack.events(edge))
        out[edge] = escalated - set(revisions)
    return out


def test_cloud_killed_mid_escalation_loses_nothing(stack: Stack) -> None:
    segments_before = _segments(stack)
    for edge in EDGES:
        stack.feed(edge, FOREIGN, "second")
    wait(lambda: any(_unanswered(stack).values()), 120, lambda: "no escalation in flight", every_s=0.2)
    stack.compose("kill", "cloud")
    pending = sum(len(v) for v in _unanswered(stack).values())
    stack.timeline.mark(f"cloud killed with {pending} escalations unanswered")
    stack.compose("start", "cloud")
    stack.wait_healthy(("cloud",))
    stack.timeline.mark("cloud restarted and healthy")
    # Every clip transcribed (at least one segment each), then every escalation answered.
    wait(lambda: all(n >= segments_before[e] + len(FOREIGN) for e, n in _segments(stack).items())
         and not any(_unanswered(stack).values()), 300,
         lambda: f"unanswered after the restart: {_unanswered(stack)}\n{stack.logs('cloud', *EDGES)}")
    escalated = dup = 0
    for edge in EDGES:
        esc, revisions = _escalations(stack.events(edge))
        escalated += len(esc)
        dup += sum(n - 1 for n in revisions.values() if n > 1)
    assert pending > 0 and dup == 0
    stack.timeline.mark(f"every escalation answered after the restart: {escalated} escalated in all, "
                        f"{pending} of them in flight at the kill, 0 lost, {dup} duplicates")


def test_fleetctl_status_shows_it_all(stack: Stack) -> None:
    table = stack.fleetctl("status", *stack.broker_args())
    print(table)
    for edge in EDGES:
        row = next(line for line in table.splitlines() if line.startswith(edge))
        assert " yes " in f" {row} " and "-r2" in row, row
    stack.timeline.mark("fleetctl status:\n" + table)
