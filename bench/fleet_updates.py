"""How fast does the fleet take an update? `python -m bench.fleet_updates --devices 1000 --json OUT`

Starts its own Mosquitto, Redis and a FetchModel gRPC server on free loopback ports, then:

1. Config: N simulated devices (real paho clients, all multiplexed on ONE thread through paho's external-loop
   API over an epoll selector). Each runs the device's real desired-state logic (`edge_node.core.desired_state`:
   pydantic validation, Ed25519 signature check, version ordering, merge) and acks over MQTT. The time is from
   the operator publishing a signed DesiredConfig (the `fleetctl config set` code path) until all N accepted
   acks have arrived at an operator-side subscriber. Repeated `--rounds` times; the median is reported.
2. Model: a second fleet of `--rollout-devices` simulated devices with the real `ModelUpdater`: each
   downloads a small real signed artifact (an ONNX model plus a data file) over gRPC FetchModel, verifies
   every sha256 and the manifest signature, loads it in onnxruntime, self-tests and swaps. The time is the
   whole staged rollout (the `fleetctl model publish --canary 10% --then all` code path): canary, wait,
   fleet, wait, done.

What is simulated: the devices' hardware (many agents in one process) and their engine (a ParamsBox / a tiny
ONNX model in place of Whisper). The broker, Redis, gRPC, signatures, hashing and the protocol are real.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import resource
import selectors
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from edge_node.adapters.model_update import ModelUpdater, UpdaterConfig
from edge_node.core.desired_state import ParamsBox, Reconciler
from shared.fleet_schema import (
    Ack,
    DeviceState,
    ack_topic,
    device_config_topic,
    device_model_topic,
    fleet_config_topic,
    fleet_model_topic,
    parse_payload,
    state_topic,
)
from shared.mqtt import Client, MqttSettings, Will, make_client
from shared.signing import init_keypair, load_private_key

log = logging.getLogger(__name__)


class Hub:
    """Many paho clients on one thread: paho says when a socket wants writing, epoll says when to read."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.clients: list[Client] = []
        self._calls: list[Any] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hub", daemon=True)

    def _register_write(self, client: Client, userdata: Any, sock: Any) -> None:
        self.sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def _unregister_write(self, client: Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.modify(sock, selectors.EVENT_READ, client)

    def _open(self, client: Client, userdata: Any, sock: Any) -> None:
        self.sel.register(sock, selectors.EVENT_READ, client)

    def _close(self, client: Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)

    def add(self, client: Client, host: str, port: int) -> None:
        """Connect (a blocking TCP connect) before the hub thread starts: the selector is then its alone."""
        client.on_socket_open = self._open
        client.on_socket_close = self._close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        client.connect(host, port, keepalive=120)
        self.clients.append(client)

    def call_soon(self, fn: Any) -> None:
        """Run fn in the hub thread (publishes from worker threads go through here)."""
        with self._lock:
            self._calls.append(fn)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, then disconnect cleanly and close every socket (paho's own loop_start uses
        select(), which fails on descriptors above 1024: later clients in this process need low ones)."""
        self._stop.set()
        self._thread.join(10)
        for c in self.clients:
            c.disconnect()
            c.loop_write()
        self.sel.close()

    def _run(self) -> None:
        last_misc = time.monotonic()
        while not self._stop.is_set():
            for key, mask in self.sel.select(timeout=0.005):
                c = key.data
                if mask & selectors.EVENT_READ:
                    c.loop_read()
                if mask & selectors.EVENT_WRITE:
                    c.loop_write()
            with self._lock:
                calls, self._calls = self._calls, []
            for fn in calls:
                fn()
            if time.monotonic() - last_misc > 1.0:  # keepalive pings
                last_misc = time.monotonic()
                for c in self.clients:
                    c.loop_misc()


class SimDevice:
    """One simulated device: the real reconciler, a ParamsBox engine stand-in, optionally a ModelUpdater."""

    def __init__(self, hub: Hub, fleet: str, device: str, key_pub: Any, updater: ModelUpdater | None = None,
                 pool: ThreadPoolExecutor | None = None) -> None:
        self.hub, self.fleet, self.device = hub, fleet, device
        self.rec = Reconciler(fleet, device, key_pub, clock=time.time)
        self.params = ParamsBox()
        self.updater, self.pool = updater, pool
        self.subscribed = threading.Event()
        self.model_done = 0
        c = make_client(MqttSettings(client_id=f"sim-{fleet}-{device}"),
                        will=Will(state_topic(fleet, device), self._state(False), qos=1, retain=True))
        c.on_connect = self._on_connect
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = self._on_message
        self.client = c

    def _state(self, online: bool) -> bytes:
        inst = self.updater.installed if self.updater else None
        return DeviceState(fleet=self.fleet, device=self.device, online=online,
                           config_version=self.rec.config_version,
                           model_version=inst.model_version if inst else None, last_seen=time.time()).to_json()

    def _on_connect(self, c: Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        topics = [fleet_config_topic(self.fleet), device_config_topic(self.fleet, self.device)]
        if self.updater:
            topics += [fleet_model_topic(self.fleet), device_model_topic(self.fleet, self.device)]
        c.subscribe([(t, 1) for t in topics])
        c.publish(state_topic(self.fleet, self.device), self._state(True), qos=1, retain=True)

    def _on_message(self, c: Client, u: Any, msg: Any) -> None:
        device_scope = "/devices/" in msg.topic
        if msg.topic.endswith("/config"):
            out = self.rec.receive_config(device_scope, bytes(msg.payload))
            if out.changed:
                self.params.apply_params(self.rec.effective_params())
            if out.ack is not None:
                c.publish(ack_topic(self.fleet, self.device), out.ack.to_json(), qos=1)
        elif msg.topic.endswith("/model") and self.updater and self.pool:
            out = self.rec.receive_model(device_scope, bytes(msg.payload))
            if out.ack is not None:
                c.publish(ack_topic(self.fleet, self.device), out.ack.to_json(), qos=1)
            desired = self.rec.desired_model()
            if out.changed and desired is not None and desired.version != self.model_done:
                self.model_done = desired.version
                self.pool.submit(self._install, desired)

    def _install(self, desired: Any) -> None:
        assert self.updater is not None
        try:
            self.updater.install(desired)
            ack = self.rec.model_ack(desired, True)
        except Exception as exc:  # report every failure as a NACK, like the real agent
            ack = self.rec.model_ack(desired, False, str(exc))

        def send() -> None:
            self.client.publish(ack_topic(self.fleet, self.device), ack.to_json(), qos=1)
            self.client.publish(state_topic(self.fleet, self.device), self._state(True), qos=1, retain=True)

        self.hub.call_soon(send)


class AckCounter:
    def __init__(self, port: int, fleet: str) -> None:
        self.lock = threading.Lock()
        self.accepted: dict[int, set[str]] = {}
        self.rejected: dict[int, dict[str, str]] = {}
        self.changed = threading.Condition(self.lock)
        self.c = make_client(MqttSettings(port=port, client_id=f"bench-acks-{fleet}"))
        self.c.on_connect = lambda c, *a: c.subscribe(f"fleet/{fleet}/devices/+/ack", qos=1)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_message(self, c: Any, u: Any, msg: Any) -> None:
        ack = parse_payload(Ack, bytes(msg.payload))
        with self.changed:
            if ack.version is not None and ack.accepted:
                self.accepted.setdefault(ack.version, set()).add(ack.device)
            elif ack.version is not None:
                self.rejected.setdefault(ack.version, {})[ack.device] = ack.reason
            self.changed.notify_all()

    def wait(self, version: int, n: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.accepted.get(version, ())) < n:
                if self.rejected.get(version):
                    some = list(self.rejected[version].items())[:3]
                    raise RuntimeError(f"config v{version} NACKed: {some}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"only {len(self.accepted.get(version, ()))}/{n} acked v{version}")
                self.changed.wait(left)
        return time.monotonic()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def bench_config(port: int, store: Any, key: Any, pub: Any, n: int, rounds: int) -> list[float]:
    from fleetctl.fleet.mqtt_io import BrokerSettings
    from fleetctl.fleet.rollout import publish_config

    hub = Hub()
    devices = [SimDevice(hub, store.fleet, f"d{i:05d}", pub) for i in range(n)]
    t = time.monotonic()
    for d in devices:
        hub.add(d.client, "127.0.0.1", port)
    hub.start()
    for d in devices:
        if not d.subscribed.wait(60):
            raise TimeoutError(f"{d.device} never subscribed")
    print(f"{n} simulated devices connected and subscribed in {time.monotonic() - t:.1f}s", file=sys.stderr)
    counter = AckCounter(port, store.fleet)
    settings = BrokerSettings(port=port)
    times: list[float] = []
    try:
        for r in range(rounds):
            threshold = round(0.5 + 0.01 * r, 2)
            t0 = time.monotonic()
            msg = publish_config(settings, store, key, {"thresholds": {"confidence": threshold}})
            t1 = counter.wait(msg.version, n, timeout=120)
            times.append(t1 - t0)
            held = [d.params.current().thresholds for d in devices]
            applied = sum(1 for t in held if t is not None and t.confidence == threshold)
            print(f"config v{msg.version}: {n} acks in {t1 - t0:.3f}s ({applied} devices applied it)",
                  file=sys.stderr)
            if applied != n:
                raise RuntimeError(f"only {applied}/{n} devices hold the new threshold")
    finally:
        counter.close()
        hub.stop()
    return times


def bench_rollout(port: int, grpc_port: int, store: Any, key: Any, pub: Any, m: int, root: Path,
                  artifact: Path) -> tuple[float, dict[str, Any]]:
    from fleetctl.fleet.mqtt_io import BrokerSettings
    from fleetctl.fleet.rollout import Rollout, RolloutPolicy, desired_from_artifact
    from testkit.fleet import OnnxTarget

    hub = Hub()
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="install")
    targets: dict[str, OnnxTarget] = {}
    devices = []
    for i in range(m):
        dev = f"r{i:03d}"
        targets[dev] = OnnxTarget()
        cfg = UpdaterConfig(models_dir=root / dev / "models", state_dir=root / dev,
                            grpc_target=f"127.0.0.1:{grpc_port}")
        devices.append(SimDevice(hub, store.fleet, dev, pub, ModelUpdater(cfg, targets[dev], pub), pool))
    for d in devices:
        hub.add(d.client, "127.0.0.1", port)
    hub.start()
    try:
        for d in devices:
            if not d.subscribed.wait(60):
                raise TimeoutError(f"{d.device} never subscribed")
        time.sleep(0.5)  # let the retained online states land
        grpc_target = f"127.0.0.1:{grpc_port}"
        candidate = desired_from_artifact(artifact, key, store.fleet, grpc_target)
        policy = RolloutPolicy(canary_share=0.1, then_all=True, ack_timeout_s=120, grpc_target=grpc_target,
                               progress=False)
        t0 = time.monotonic()
        rec = Rollout(BrokerSettings(port=port), store, key, policy).run(candidate)
        elapsed = time.monotonic() - t0
        serving = sum(1 for t in targets.values() if t.version == candidate.model_version)
        print(f"rollout {rec['state']}: canary {len(rec['canary'])}, {serving}/{m} serving "
              f"{candidate.name} {candidate.model_version} after {elapsed:.2f}s", file=sys.stderr)
        if rec["state"] != "done" or serving != m:
            raise RuntimeError(f"rollout ended {rec['state']} with {serving}/{m} serving: "
                               f"{rec.get('failures')}")
        return elapsed, rec
    finally:
        hub.stop()
        pool.shutdown(wait=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet_updates", description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--rollout-devices", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3, help="config changes measured (median reported)")
    p.add_argument("--artifact-kib", type=int, default=1024, help="size of the artifact's data file")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from fleetctl.fleet.store import FleetStore, connect_redis
    from testkit.fleet import ArtifactServicer, build_artifact, serve_artifacts
    from testkit.servers import MosquittoServer, RedisServer

    _raise_nofile()  # mosquitto inherits it: one descriptor per client on each side
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        root = Path(tmp)
        conf = "allow_anonymous true\nmax_connections -1\n"
        broker, redis = MosquittoServer(root / "mosquitto", extra_conf=conf), RedisServer(root / "redis")
        broker.start()
        redis.start()
        grpc_server = None
        try:
            priv_path, _ = init_keypair(root / "keys")
            key = load_private_key(priv_path)
            pub = key.public_key()
            r = connect_redis(redis.url)
            times = bench_config(broker.port, FleetStore(r, "bench"), key, pub, args.devices, args.rounds)
            artifact, manifest = build_artifact(root / "artifacts", "bench-model", "1", key, 1.0,
                                                extra_bytes=args.artifact_kib * 1024)
            servicer = ArtifactServicer({("bench-model", "1"): artifact})
            grpc_server, grpc_port = serve_artifacts(servicer)
            rollout_s, rec = bench_rollout(broker.port, grpc_port, FleetStore(r, "bench-rollout"), key, pub,
                                           args.rollout_devices, root / "devices", artifact)
        finally:
            if grpc_server is not None:
                grpc_server.stop(0)
            broker.stop()
            redis.stop()
    out = {
        "devices": args.devices,
        "config_ack_s": round(statistics.median(times), 3),
        "config_ack_runs_s": [round(t, 3) for t in times],
        "rollout_devices": args.rollout_devices,
        "rollout_s": round(rollout_s, 3),
        "rollout_canary_devices": len(rec["canary"]),
        "artifact_bytes": manifest.total_bytes,
        "goals": {"config_ack_s": 2.0, "rollout_s": 30.0},
    }
    print(json.dumps(out))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
