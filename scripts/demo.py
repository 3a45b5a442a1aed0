"""`make demo`: the whole system as local processes (no Docker), on real speech, in about three minutes.

Redis and Mosquitto (per-device passwords, the project's ACL) on free ports, the fleet controller, the cloud
service and a worker, two edge nodes fed Asterisk prompts (English clean, English with white noise at 5 dB,
Spanish) through their watched directories. It shows edge results, escalations and cloud revisions as they happen,
an operator's signed config change over MQTT taking effect, and `fleetctl status`; then stops everything with
SIGTERM and checks what happened. Logs, events and audio stay in bench/out/demo-<UTC time>/.
Exit 0 when every check passed; otherwise 1 with a one-line reason.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python scripts/demo.py`
    sys.path.insert(0, str(ROOT))

from edge_node.daemon.sources import file_key  # noqa: E402
from evaluation.scoring import word_errors, words  # noqa: E402
from fleetctl.fleet.mqtt_io import BrokerSettings  # noqa: E402
from scripts import demo_audio  # noqa: E402
from scripts.demo_monitor import Console, EventTail, FileInfo, MqttWatch, Record  # noqa: E402
from scripts.demo_topology import (  # noqa: E402
    PY,
    Broker,
    Proc,
    StartError,
    cloud_healthy,
    register_device,
    start_redis,
    submit,
)
from testkit.servers import RedisServer, free_port  # noqa: E402

ARTIFACT = ROOT / "models" / "tiny.en-int8"
FLEET = "demo"
NODES = ("edge-1", "edge-2")
NEW_THRESHOLD = 0.9
DEFAULT_THRESHOLD = 0.6  # ConfidenceConfig's escalation threshold before the operator changes it
FILE_GAP_S = 1.0  # pause between files arriving at a node


def show_artifact() -> None:
    manifest = json.loads((ARTIFACT / "manifest.json").read_text())
    print(f"== edge artifact {ARTIFACT.relative_to(ROOT)}: {manifest['model']} {manifest['version']}")
    quant = manifest["quantization"]
    print(f"   quantization: {quant['weights']}; {quant.get('tied_embedding', '')}")
    total = 0
    for name, info in sorted(manifest["files"].items()):
        total += info["size"]
        print(f"   {name:<20} {info['size'] / 1e6:8.2f} MB  sha256 {info['sha256'][:16]}…")
    print(f"   {'total':<20} {total / 1e6:8.2f} MB ({total / 2**20:.2f} MiB)")


class Demo:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out  # shorter console lines
        self.console = Console()
        self.record = Record()
        self.procs: dict[str, Proc] = {}
        self.checks: list[tuple[bool, str]] = []
        self.redis: RedisServer | None = None
        self.broker = Broker(out, FLEET, NODES)
        self.watch: MqttWatch | None = None
        self.tail: EventTail | None = None

    # -- helpers ---------------------------------------------------------------------------------------------
    def say(self, text: str, source: str = "demo") -> None:
        self.console.say(source, text)

    def check(self, ok: bool, what: str) -> None:
        self.checks.append((ok, what))

    def fleet_args(self, user: str) -> list[str]:
        assert self.broker.server is not None and self.redis is not None
        return ["--broker", f"127.0.0.1:{self.broker.server.port}", "--fleet", FLEET, "--redis", self.redis.url,
                "--mqtt-user", user, "--mqtt-password-file", str(self.broker.passwords[user])]

    def fleetctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `fleetctl ARGS` as the operator would, echoing the command line (paths relative, no secrets)."""
        shown = " ".join(a.replace(f"{ROOT}/", "") for a in args)
        self.say(f"$ fleetctl {shown}", "operator")
        return subprocess.run([PY, "-m", "fleetctl", *args], cwd=ROOT, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)

    # -- start ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.clips = demo_audio.build(self.out / "audio")
        n = sum(len(c) for nodes in self.clips.values() for c in nodes.values())
        self.say(f"speech: {n} Asterisk prompts (en clean, en + white noise {demo_audio.NOISE_SNR_DB:g} dB, es) "
                 f"in {self.shown / 'audio'}/", "setup")
        self.redis = start_redis(self.out)
        self.say(f"redis-server   {self.redis.url}", "setup")
        self.broker.provision()
        port = self.broker.start()
        self.say(f"mosquitto      127.0.0.1:{port}  (no anonymous; passwords for {', '.join(self.broker.passwords)};"
                 f" deploy/mosquitto/acl)", "setup")
        self.procs["controller"] = Proc("controller", [PY, "-m", "fleetctl", "controller",
                                                       *self.fleet_args("fleet-controller")],
                                        self.out / "controller.log").start()
        tokens = self.out / "tokens"
        tokens.mkdir(mode=0o700)
        for node in NODES:
            register_device(self.redis.url, node, tokens / f"{node}.token")
        self.say(f"devices {', '.join(NODES)} registered; tokens in {self.shown / 'tokens'}/ (mode 0600, not shown)",
                 "setup")

        self.cloud_target = f"127.0.0.1:{free_port()}"
        model = str(ROOT / "models" / "base.pt")
        self.procs["cloud"] = Proc("cloud", [PY, "-m", "cloud_service", "serve", "--listen", self.cloud_target,
                                             "--model", model, "--redis", self.redis.url, "--threads", "1",
                                             "--fleet", FLEET],
                                   self.out / "cloud.log").start()
        heartbeat = self.out / "worker.heartbeat"
        self.procs["worker"] = Proc("worker", [
            PY, "-m", "cloud_service", "worker", "--redis", self.redis.url, "--model", model, "--threads", "1",
            "--fleet", FLEET, "--mqtt-host", "127.0.0.1", "--mqtt-port", str(port), "--mqtt-user", "cloud-service",
            "--mqtt-password-file", str(self.broker.passwords["cloud-service"]), "--heartbeat-file", str(heartbeat),
        ], self.out / "worker.log").start()
        self.watch = MqttWatch(self._operator_settings(), FLEET, self.record, self.console)
        self.procs["cloud"].wait_until(lambda: cloud_healthy(self.cloud_target), 240, "gRPC health SERVING")
        self.say(f"cloud-service  {self.cloud_target}  (openai-whisper base, gRPC health SERVING)", "setup")
        self.procs["worker"].wait_until(heartbeat.exists, 240, "heartbeat")
        self.say("worker         reading Redis stream asr:jobs, results to MQTT as cloud-service", "setup")
        self.procs["controller"].wait_until(lambda: True, 1, "start")
        self.start_edges(port, tokens)

    def _operator_settings(self) -> BrokerSettings:
        assert self.broker.server is not None
        return BrokerSettings(port=self.broker.server.port, username="fleet-operator",
                              password=self.broker.passwords["fleet-operator"].read_text().strip())

    def start_edges(self, port: int, tokens: Path) -> None:
        events: dict[str, Path] = {}
        for node in NODES:
            src = self.out / node / "incoming"
            src.mkdir(parents=True)
            events[node] = self.out / node / "events.jsonl"
            cmd = [PY, "-m", "edge_node", "run", "--source", str(src), "--cloud", self.cloud_target,
                   "--device-id", node, "--token-file", str(tokens / f"{node}.token"),
                   "--state-dir", str(self.out / node / "state"), "--events", str(events[node]),
                   "--keep-running", "--threads", "1", "--budget", "1.0"]
            cmd += ["--mqtt", f"127.0.0.1:{port}", "--mqtt-user", node, "--mqtt-password-file",
                    str(self.broker.passwords[node]), "--fleet", FLEET,
                    "--operator-pubkey", str(ROOT / "keys" / "operator.pub")]
            self.procs[node] = Proc(node, cmd, self.out / node / "edge.log").start()
        self.tail = EventTail(events, self.record, self.console)
        self.tail.start()
        for node in NODES:
            proc = self.procs[node]

            def reading(p: Proc = proc) -> bool:
                return " reading " in p.log_text()

            def online(n: str = node) -> bool:
                return self.record.states.get(n, {}).get("online") is True

            proc.wait_until(reading, 180, "'reading' log line")
            if not self.record.wait(online, 60):
                raise StartError(f"{node} did not report online over MQTT within 60s")
        self.say(f"edge nodes     {', '.join(NODES)} watching their incoming/ directories (MQTT agents online)",
                 "setup")

    # -- feed ----------------------------------------------------------------------------------------------
    def feed(self, phase: int) -> None:
        """Each node gets its files one at a time, as a recorder would drop them; both nodes in parallel."""
        errors: list[str] = []

        def one_node(node: str, clips: list[demo_audio.Clip]) -> None:
            incoming = self.out / node / "incoming"
            processed = self.out / node / "state" / "processed.txt"
            for clip in clips:
                key = file_key(clip.path)
                with self.record.cond:
                    self.record.files[key] = FileInfo(node, clip.name, clip.text, phase, clip.lang)
                part = incoming / f"{clip.name}.wav.part"
                part.write_bytes(clip.path.read_bytes())
                part.rename(incoming / f"{clip.name}.wav")  # whole file appears at once
                def done(key: str = key) -> bool:
                    return processed.exists() and key in processed.read_text()

                try:
                    self.procs[node].wait_until(done, 120, f"{clip.name} processed")
                except StartError:
                    errors.append(f"{node} did not finish {clip.name}")
                    return
                time.sleep(FILE_GAP_S)

        threads = [threading.Thread(target=one_node, args=(node, clips)) for node, clips in
                   self.clips[phase].items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.check(not errors, f"phase {phase}: every file processed by its node" + (
            f" ({'; '.join(errors)})" if errors else ""))
        assert self.tail is not None
        self.tail.poll()
        ok = self.record.wait(lambda: not self.record.pending_revisions(), 180)
        self.check(ok, f"phase {phase}: every escalation answered within 180 s")

    # -- operator ---------------------------------------------------------------------------------------------
    def change_config(self) -> None:
        done = self.fleetctl("config", "set", f"thresholds.confidence={NEW_THRESHOLD}",
                             *self.fleet_args("fleet-operator"), "--key", str(ROOT / "keys" / "operator.key"))
        if done.returncode != 0:
            self.check(False, f"fleetctl config set: {(done.stderr.strip().splitlines() or ['failed'])[-1]}")
            return
        self.say(done.stdout.strip(), "operator")
        version = int(done.stdout.split(" v", 1)[1].split()[0])

        def acked() -> bool:
            return all(any(a.get("device") == n and a.get("kind") == "config" and a.get("version") == version
                           and a.get("accepted") for a in self.record.acks) for n in NODES)

        self.check(self.record.wait(acked, 30), f"config v{version} acked (accepted) by {', '.join(NODES)}")

    def async_path(self) -> None:
        """Submit -> Redis Stream -> worker -> MQTT results topic: the cloud's asynchronous path."""
        clip = self.clips[1]["edge-2"][0]
        seg_id = f"edge-2-async-{clip.name}"
        stream_id = submit(self.cloud_target, "edge-2", self.out / "tokens" / "edge-2.token", seg_id, clip.path)
        self.say(f"Submit {clip.name} as edge-2 -> Redis stream asr:jobs entry {stream_id}", "worker")

        def published() -> bool:
            return any(r.get("segment_id") == seg_id for r in self.record.results)

        self.check(self.record.wait(published, 60),
                   "worker decoded the submitted job and published it to fleet/demo/devices/edge-2/results")

    def status(self) -> None:
        # Devices republish their state (with counters) after each update and every 30 s; wait for the copy that
        # includes the last segments, so the table's ESC RATE is the final one and not a stale one.
        seen = Counter(s["node"] for s in self.record.segments)
        escalated = Counter(s["node"] for s in self.record.segments if not s["final"])

        def current() -> bool:
            return all(self.record.states.get(n, {}).get("counters", {}).get("segments") == seen[n] for n in NODES)

        if not current():
            self.say("waiting for the nodes' next state heartbeat (every 30 s) so status has the final counters")
        fresh = self.record.wait(current, 45)
        self.check(fresh, "devices reported their final counters over MQTT (" + ", ".join(
            f"{n}: {escalated[n]}/{seen[n]} escalated" for n in NODES) + ")")
        done = self.fleetctl("status", *self.fleet_args("fleet-operator"))
        self.say(done.stdout.rstrip() or done.stderr.strip(), "status")
        self.check(done.returncode == 0 and all(n in done.stdout for n in NODES),
                   "fleetctl status lists both devices")

    # -- checks -------------------------------------------------------------------------------------------------
    def verify(self) -> None:
        rec = self.record
        escalated = [s for s in rec.segments if not s["final"]]
        per_seg = Counter(r["segment_id"] for r in rec.revisions)
        once = all(per_seg[s["segment_id"]] == 1 for s in escalated) and set(per_seg) <= {
            s["segment_id"] for s in escalated}
        self.check(bool(escalated) and once and not rec.failures,
                   f"every escalated segment got exactly one cloud revision ({len(escalated)} escalated, "
                   f"{len(rec.revisions)} revisions, {len(rec.failures)} failed)")
        spanish = [r for r in rec.revisions if (i := rec.file_of(r["segment_id"])) and i.lang == "es"]
        self.check(bool(spanish) and all(r.get("language") == "es" for r in spanish),
                   f"cloud detected Spanish for every Spanish revision ({len(spanish)})")
        for phase, threshold in ((1, DEFAULT_THRESHOLD), (2, NEW_THRESHOLD)):
            segs = [s for s in rec.segments if (i := rec.file_of(s["segment_id"])) and i.phase == phase]
            wrong = [s for s in segs if (s["confidence"] < threshold) == s["final"]]
            self.check(bool(segs) and not wrong, f"phase {phase}: escalated exactly the segments with "
                       f"confidence < {threshold} ({len(segs) - len(wrong)}/{len(segs)})")
        between = [s for s in rec.segments if DEFAULT_THRESHOLD <= s["confidence"] < NEW_THRESHOLD]
        moved = [s for s in between if (i := rec.file_of(s["segment_id"])) and i.phase == 2 and not s["final"]]
        self.check(bool(moved), f"the new threshold took effect: {len(moved)} segment(s) with confidence in "
                   f"[{DEFAULT_THRESHOLD}, {NEW_THRESHOLD}) escalated after the change")

    def summary(self) -> None:
        self.say("per clip (word errors vs the Asterisk transcript: edge -> final):", "summary")
        revision = {r["segment_id"]: r["text"] for r in self.record.revisions}
        totals = [0, 0, 0]  # edge errors, final errors, reference words
        for key, info in sorted(self.record.files.items(), key=lambda kv: (kv[1].phase, kv[1].node)):
            segs = self.record.segments_of(key)
            edge = " ".join(s["text"] for s in segs)
            final = " ".join(revision.get(s["segment_id"], s["text"]) for s in segs)
            ref = words(info.text, info.lang)
            e_err, f_err = (word_errors(ref, words(t, info.lang)) for t in (edge, final))
            totals = [totals[0] + e_err, totals[1] + f_err, totals[2] + len(ref)]
            how = "escalated" if any(not s["final"] for s in segs) else "edge only"
            conf = ", ".join(f"{s['confidence']:.2f}" for s in segs) or "-"
            self.say(f"phase {info.phase} {info.node} {info.clip:<34} conf {conf:<5} {how:<9} "
                     f"{e_err:>2} -> {f_err:>2} of {len(ref)} words", "summary")
        e_tot, f_tot, n_tot = totals
        self.say(f"all clips: edge alone {e_tot} word errors of {n_tot} (WER {e_tot / max(1, n_tot):.1%}); with the "
                 f"cloud's revisions {f_tot} (WER {f_tot / max(1, n_tot):.1%})", "summary")

    # -- stop -------------------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        order = [*NODES, "worker", "cloud", "controller"]
        for name in order:
            proc = self.procs.get(name)
            if proc is None:
                continue
            rc = proc.stop()
            self.say(f"stopped {name:<10} (SIGTERM) exit code {rc}", "stop")
            self.check(rc == 0, f"{name} exited cleanly (code {rc})")
        if self.tail:
            self.tail.stop.set()
            self.tail.join(5)
        if self.watch:
            time.sleep(0.5)  # the nodes' last "offline" states
            self.watch.close()
        rc = self.broker.stop()
        self.say(f"stopped mosquitto  exit code {rc}", "stop")
        if self.redis is not None:
            self.redis.stop()
            rc = self.redis.proc.returncode if self.redis.proc else None
            self.say(f"stopped redis      exit code {rc}", "stop")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM to the demo: stop the children in order, as for Ctrl-C


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    show_artifact()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%SZ")
    out = ROOT / "bench" / "out" / f"demo-{stamp}"
    out.mkdir(parents=True)
    demo = Demo(out)
    print(f"== whole-system demo: logs in {demo.shown}/")
    failure = ""
    try:
        demo.start()
        demo.say("phase 1: default confidence threshold (escalate below 0.6)")
        demo.feed(1)
        demo.change_config()
        demo.say(f"phase 2: after the operator's change (escalate below {NEW_THRESHOLD})")
        demo.feed(2)
        demo.async_path()
        demo.status()
        demo.verify()
        demo.summary()
    except StartError as exc:
        failure = str(exc)
    except KeyboardInterrupt:
        failure = "interrupted"
    finally:
        demo.shutdown()
    for ok, what in demo.checks:
        demo.say(f"{'ok  ' if ok else 'FAIL'} {what}", "check")
    failed = [what for ok, what in demo.checks if not ok]
    total = time.monotonic() - demo.console.t0
    print(f"== demo finished in {total:.0f} s; logs, events and audio in {demo.shown}/")
    if failure or failed:
        print(f"demo failed: {failure or failed[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
