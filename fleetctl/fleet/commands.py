"""`fleetctl` subcommands for the MQTT control plane: config set/clear, model publish, rollback, status, controller.

Common options: --broker HOST:PORT, --fleet NAME, --redis-url-file FILE (or $FLEET_REDIS_URL, or --redis URL),
--mqtt-user (or $FLEET_MQTT_USERNAME); the MQTT password comes from $FLEET_MQTT_PASSWORD_FILE /
--mqtt-password-file or $FLEET_MQTT_PASSWORD, never argv. A broker off loopback needs --tls-ca or --insecure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetctl.fleet.controller import install_stop_handler, run_controller
from fleetctl.fleet.mqtt_io import BrokerSettings, collect_retained, read_password
from fleetctl.fleet.rollout import (
    Rollout,
    RolloutPolicy,
    clear_config,
    desired_from_artifact,
    manual_rollback,
    parse_assignments,
    publish_config,
    rollback_config,
)
from fleetctl.fleet.store import FleetStore, connect_redis
from shared.cli import add_redis_options, redis_url
from shared.errors import UserError
from shared.fleet_schema import DeviceState, all_states_topic, check_name, parse_payload, parse_topic
from shared.net import INSECURE_HELP, parse_host_port, require_tls
from shared.signing import load_private_key


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fleet connection")
    g.add_argument("--broker", default=os.environ.get("FLEET_BROKER", "127.0.0.1:1883"),
                   help="MQTT HOST:PORT")
    g.add_argument("--fleet", default=os.environ.get("FLEET_NAME", "default"))
    add_redis_options(g, "FLEET_REDIS_URL", default="redis://127.0.0.1:6379/0")
    g.add_argument("--mqtt-user", default=os.environ.get("FLEET_MQTT_USERNAME"))
    g.add_argument("--mqtt-password-file",
                   help="file holding the MQTT password (or $FLEET_MQTT_PASSWORD_FILE)")
    g.add_argument("--tls-ca", help="CA certificate: connect to the broker with TLS")
    g.add_argument("--insecure", action="store_true", help=INSECURE_HELP)


def _signing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key",
                   help="operator private key (default $FLEET_OPERATOR_KEY_FILE or keys/operator.key)")


def settings_from(args: argparse.Namespace) -> BrokerSettings:
    host, port = parse_host_port(args.broker, what="--broker")
    if args.fleet != "+":
        check_name(args.fleet, "fleet")
    require_tls(host, tls=bool(args.tls_ca), insecure=args.insecure, what=f"--broker {args.broker}",
                tls_flag="--tls-ca")  # the factory checks too; this names fleetctl's own flag
    return BrokerSettings(host=host, port=port, username=args.mqtt_user,
                          password=read_password(file=args.mqtt_password_file),
                          tls_ca=Path(args.tls_ca) if args.tls_ca else None, insecure=args.insecure)


def _store(args: argparse.Namespace) -> FleetStore:
    return FleetStore(connect_redis(_redis_url(args)), args.fleet)


def _redis_url(args: argparse.Namespace) -> str:
    url = redis_url(args)
    if not url:
        raise UserError("give --redis-url-file FILE, $FLEET_REDIS_URL or --redis URL")
    return url


def _key(args: argparse.Namespace) -> Ed25519PrivateKey:
    path = args.key or os.environ.get("FLEET_OPERATOR_KEY_FILE") or "keys/operator.key"
    return load_private_key(Path(path))


def _share(value: str) -> float:
    v = value.strip()
    try:
        share = float(v[:-1]) / 100 if v.endswith("%") else float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a share such as 10% or 0.1") from None
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"{value!r}: must be between 0% and 100%")
    return share


# ---------------------------------------------------------------------------------------------- commands


def cmd_config_set(args: argparse.Namespace) -> int:
    updates = parse_assignments(args.assignments)
    msg = publish_config(settings_from(args), _store(args), _key(args), updates, args.device)
    scope = f"device {args.device}" if args.device else f"fleet {args.fleet}"
    print(f"published config v{msg.version} for {scope}: "
          f"{json.dumps(msg.params.model_dump(mode='json', exclude_none=True), sort_keys=True)}")
    return 0


def cmd_config_clear(args: argparse.Namespace) -> int:
    tomb = clear_config(settings_from(args), _store(args), _key(args), args.device)
    what = (f"device {args.device}'s override (it inherits the fleet config)" if args.device
            else f"fleet {args.fleet}'s config (devices use their engine defaults)")
    print(f"cleared {what}: signed tombstone v{tomb.version}")
    return 0


def cmd_model_publish(args: argparse.Namespace) -> int:
    if args.then not in ("all", "none"):
        raise UserError(f"--then {args.then!r}: expected 'all' or 'none'")
    key = _key(args)
    candidate = desired_from_artifact(Path(args.dir), key, args.fleet, args.source)
    policy = RolloutPolicy(canary_share=args.canary, then_all=args.then == "all",
                           max_failure_share=args.max_failures, ack_timeout_s=args.timeout,
                           grpc_target=args.source, progress=not args.no_progress)
    rec = Rollout(settings_from(args), _store(args), key, policy).run(candidate)
    return _report_rollout(rec, f"{candidate.name} {candidate.model_version}")


def _report_rollout(rec: dict[str, Any], what: str) -> int:
    state = rec.get("state")
    failures = rec.get("failures") or {}
    for dev, why in sorted(failures.items()):
        print(f"  {dev}: {why}", file=sys.stderr)
    if state == "rolled_back":
        back = rec.get("rolled_back_to") or "(no earlier model: desired model cleared)"
        raise UserError(f"rollout of {what} halted ({len(failures)} failed); rolled back to {back}")
    print(f"rollout of {what}: {state} (canary {len(rec.get('canary', []))} devices"
          + (f", fleet {rec.get('acked')} acked" if state == "done" else "") + ")")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    if args.config:
        msg = rollback_config(settings_from(args), _store(args), _key(args))
        print(f"fleet {args.fleet}: config rolled back, republished as v{msg.version}")
        return 0
    policy = RolloutPolicy(ack_timeout_s=args.timeout, progress=not args.no_progress)
    rec = manual_rollback(settings_from(args), _store(args), _key(args), policy)
    print(f"fleet {args.fleet}: model rolled back to {rec.get('rolled_back_to')} "
          f"({rec.get('rollback_acked', 0)} devices acked)")
    return 0


def status_rows(settings: BrokerSettings, fleet: str, store: FleetStore | None) -> list[dict[str, Any]]:
    """One row per device: retained state from the broker, merged with what Redis recorded."""
    rows: dict[str, dict[str, Any]] = {}
    if store is not None:
        for dev, rec in store.devices().items():
            st = rec.get("state")
            rows[dev] = {"device": dev, "state": st, "last_seen": rec.get("last_seen")}
    for topic, payload in collect_retained(settings, all_states_topic(fleet)).items():
        info = parse_topic(topic)
        try:
            st = parse_payload(DeviceState, payload)
        except UserError:
            continue
        if info is None or info.device != st.device:
            continue
        row = rows.setdefault(st.device, {"device": st.device, "last_seen": None})
        row["state"] = st  # the broker's retained state is authoritative for online/offline
        if st.online:
            row["last_seen"] = max(row["last_seen"] or 0.0, st.last_seen)
        elif row["last_seen"] is None:
            row["last_seen"] = st.last_seen
    return [rows[d] for d in sorted(rows)]


def format_status(rows: list[dict[str, Any]]) -> str:
    header = ("DEVICE", "ONLINE", "MODEL", "CONFIG", "LAST SEEN", "ESC RATE")
    lines = [header]
    for r in rows:
        st: DeviceState | None = r.get("state")
        seen = r.get("last_seen")
        rate = st.escalation_rate if st else None
        lines.append((
            r["device"],
            ("yes" if st.online else "no") if st else "?",
            f"{st.model_name} {st.model_version}" if st and st.model_version else "-",
            f"v{st.config_version}" if st else "-",
            dt.datetime.fromtimestamp(seen, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if seen else "-",
            f"{rate:.1%}" if rate is not None else "-",
        ))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines)
    return "\n".join(out)


def cmd_status(args: argparse.Namespace) -> int:
    store = None
    if not args.no_redis:
        store = _store(args)
    rows = status_rows(settings_from(args), args.fleet, store)
    if args.json:
        print(json.dumps([{"device": r["device"], "last_seen": r.get("last_seen"),
                           "state": json.loads(r["state"].to_json()) if r.get("state") else None}
                          for r in rows], indent=2))
    else:
        print(format_status(rows) if rows else f"fleet {args.fleet}: no devices have reported")
    return 0


def cmd_controller(args: argparse.Namespace) -> int:
    stop = threading.Event()
    install_stop_handler(stop)
    run_controller(settings_from(args), connect_redis(_redis_url(args)), args.fleet, stop)
    return 0


# ---------------------------------------------------------------------------------------------- parser


def add_fleet_commands(sub: Any, model_sub: Any) -> None:
    """Hook into fleetctl's parser: `config`, `rollback`, `status`, `controller`, and `model publish`."""
    config = sub.add_parser("config", help="live parameters").add_subparsers(dest="config_cmd", required=True)
    c = config.add_parser("set", help="publish a retained, signed, versioned DesiredConfig")
    c.add_argument("assignments", nargs="+", metavar="KEY=VALUE",
                   help="e.g. thresholds.confidence=0.6 beam_size=3 prompt_words=alpha,beta "
                        "'hotwords=Home Assistant,Kitchen lights' vad.threshold=null")
    c.add_argument("--device", help="a per-device override instead of the fleet-wide config")
    _common(c)
    _signing(c)
    c.set_defaults(func=cmd_config_set)
    c = config.add_parser("clear", help="publish a retained, signed, versioned tombstone: no override for "
                          "--device any more, or no fleet-wide config (never an empty retained payload: devices "
                          "ignore those)")
    c.add_argument("--device", help="clear this device's override instead of the fleet-wide config")
    _common(c)
    _signing(c)
    c.set_defaults(func=cmd_config_clear)

    p = model_sub.add_parser("publish", help="staged rollout: canary group first, then the whole fleet")
    p.add_argument("dir", help="signed artifact directory")
    p.add_argument("--canary", type=_share, default=0.1, help="share of online devices first (default 10%%)")
    p.add_argument("--then", default="all", help="'all' (default) or 'none' to stop after the canary")
    p.add_argument("--max-failures", type=_share, default=0.0,
                   help="halt and roll back when more than this share of a phase fails (default 0%%)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a phase's acks")
    p.add_argument("--source",
                   help="FetchModel server HOST:PORT named in the message (default: the device's own)")
    p.add_argument("--no-progress", action="store_true")
    _common(p)
    _signing(p)
    p.set_defaults(func=cmd_model_publish)

    r = sub.add_parser("rollback", help="return the fleet to the model before the last rollout")
    r.add_argument("--config", action="store_true", help="roll back the fleet-wide config instead")
    r.add_argument("--timeout", type=float, default=60.0)
    r.add_argument("--no-progress", action="store_true")
    _common(r)
    _signing(r)
    r.set_defaults(func=cmd_rollback)

    s = sub.add_parser("status", help="table of devices: online, model, config, last seen, escalation rate")
    s.add_argument("--json", action="store_true")
    s.add_argument("--no-redis", action="store_true", help="only the broker's retained state")
    _common(s)
    s.set_defaults(func=cmd_status)

    k = sub.add_parser("controller",
                       help="record device state and acks from MQTT into Redis (runs until killed)")
    _common(k)
    k.set_defaults(func=cmd_controller)  # --fleet + records every fleet

