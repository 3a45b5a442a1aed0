"""`edge-node run`: arguments -> one DaemonConfig -> the daemon."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_node.core.escalation_policy import EscalationPolicy
from edge_node.engine.config import DEFAULT_MODEL_DIR, EdgeConfig
from shared.errors import UserError
from shared.fsutil import read_secret
from shared.net import INSECURE_HELP, parse_host_port, require_tls

if TYPE_CHECKING:
    from edge_node.adapters.cloud_client import CloudClientConfig
    from edge_node.adapters.mqtt_agent import AgentConfig
    from edge_node.daemon.config import DaemonConfig

# The daemon, the MQTT agent (paho, the fleet schema), the gRPC client and the outbox are imported by the
# functions that use them: `edge-node` parses its command line for every command, and `transcribe` or `--help`
# should not pay ~0.5 s for them.

def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `low`, refused with argparse's own one-line error (exit 2) otherwise.
    `--outbox-max-entries 0` used to be accepted and crash the first escalation."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, not {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, not {value}")
        return value

    return parse


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, not {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, not {text}")
    return value


def add_run_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="the edge daemon: transcribe a source, escalate doubtful segments to the cloud")
    p.add_argument("--source", required=True, help="an audio file, a directory files arrive in, or - for raw "
                   "PCM16 16 kHz mono on stdin")
    p.add_argument("--cloud", help="cloud HOST:PORT (omit: edge only, nothing escalated)")
    p.add_argument("--device-id", required=True)
    p.add_argument("--token-file", type=Path, help="file holding this device's bearer token")
    p.add_argument("--tls-ca", type=Path, help="CA certificate: use TLS to the cloud")
    p.add_argument("--tls-cert", type=Path, help="client certificate (mTLS)")
    p.add_argument("--tls-key", type=Path, help="client key (mTLS)")
    p.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
    p.add_argument("--lang", default="en", help="the device's language, sent unless the segment looks foreign")
    p.add_argument("--state-dir", type=Path, default=Path("state"), help="outbox and progress (default ./state)")
    p.add_argument("--outbox-key-file", type=Path, help="AES-256 key file (default: STATE_DIR/outbox.key, "
                   "made on first start)")
    p.add_argument("--outbox-max-entries", type=_int_at_least(1), default=10_000, metavar="N",
                   help="most escalations kept waiting; when full the oldest is dropped, logged and counted "
                   "(default 10000)")
    p.add_argument("--events", type=Path, help="JSON Lines output file (default stdout)")
    p.add_argument("--wire", choices=["flac", "opus", "pcm16"], default="flac", help="audio encoding to the cloud")
    p.add_argument("--budget", type=float, default=None, metavar="FRACTION",
                   help="most share of audio seconds escalated per rolling 10 min (default 0.5)")
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--threads", type=_int_at_least(0), default=0)
    p.add_argument("--beam", type=int, default=None)
    p.add_argument("--prompt", default=None, help="initial prompt (hot words)")
    p.add_argument("--split-pause", type=float, default=0.5, metavar="SECONDS",
                   help="a pause this long ends a segment, so each utterance is judged on its own (default 0.5)")
    p.add_argument("--timeout", type=_positive_seconds, default=30.0, help="deadline per cloud call, seconds")
    p.add_argument("--heartbeat-file", type=Path, help="touched while alive (container health checks)")
    p.add_argument("--metrics-listen", metavar="HOST:PORT", help="serve Prometheus /metrics here (PORT or :PORT: "
                   "on 127.0.0.1; default: off)")
    m = p.add_argument_group("MQTT control plane (live parameters, model rollouts, state)")
    m.add_argument("--mqtt", metavar="HOST:PORT", help="broker; omit to run without a control plane")
    m.add_argument("--mqtt-user", help="broker user (default: the device id)")
    m.add_argument("--mqtt-password-file", type=Path)
    m.add_argument("--mqtt-tls-ca", type=Path, help="CA certificate: connect to the broker with TLS")
    m.add_argument("--fleet", default="default")
    m.add_argument("--operator-pubkey", type=Path, help="operator Ed25519 public key: verifies pushed "
                   "config and models (required with --mqtt)")
    p.add_argument("--keep-running", action="store_true", help="after a file or stdin ends, keep serving "
                   "instead of exiting once the outbox is drained")
    p.set_defaults(func=cmd_run)


def config_from_args(args: argparse.Namespace) -> DaemonConfig:
    from edge_node.daemon.config import DaemonConfig
    from edge_node.daemon.outbox import OutboxLimits
    from shared.wire_audio import WireEncoding

    if args.source != "-" and not Path(args.source).exists():
        raise UserError(f"--source {args.source}: no such file or directory")
    if args.beam is not None and not 1 <= args.beam <= 16:
        raise UserError(f"--beam must be between 1 and 16, not {args.beam}")
    if args.metrics_listen:  # refused before the state directory or the model is touched
        from shared.metrics_http import parse_metrics_listen

        parse_metrics_listen(args.metrics_listen)
    cloud = _cloud_config(args) if args.cloud else None
    policy = EscalationPolicy(device_language=args.lang)
    if args.budget is not None:
        if not 0.0 <= args.budget <= 1.0:
            raise UserError(f"--budget is a share of audio seconds in [0, 1], not {args.budget}")
        policy = replace(policy, budget_fraction=args.budget)
    # No implicit key (it used to be keys/operator.pub relative to the working directory, so a device started
    # elsewhere took unsigned config): with a control plane the key is explicit, or the daemon does not start.
    pubkey = args.operator_pubkey
    agent = _agent_config(args, pubkey) if args.mqtt else None
    edge = EdgeConfig(model_dir=args.model_dir, threads=args.threads, beam_size=args.beam,
                      initial_prompt=args.prompt, split_pause_s=args.split_pause if args.split_pause > 0 else None)
    return DaemonConfig(
        source=args.source, device_id=args.device_id, state_dir=args.state_dir, edge=edge, policy=policy,
        cloud=cloud, outbox_key_file=args.outbox_key_file,
        outbox_limits=OutboxLimits(max_entries=args.outbox_max_entries), wire=WireEncoding(args.wire),
        events=args.events, exit_when_drained=False if args.keep_running else None,
        heartbeat_file=args.heartbeat_file, agent=agent, operator_pubkey=pubkey,
        metrics_listen=args.metrics_listen,
    )


def _cloud_config(args: argparse.Namespace) -> CloudClientConfig:
    from edge_node.adapters.cloud_client import CloudClientConfig, check_transport, read_token

    if not args.token_file:
        raise UserError("--cloud needs --token-file (the device's bearer token)")
    cloud = CloudClientConfig(
        target=args.cloud, device_id=args.device_id, token=read_token(args.token_file), tls_ca=args.tls_ca,
        tls_cert=args.tls_cert, tls_key=args.tls_key, timeout_s=args.timeout, insecure=args.insecure,
    )
    check_transport(cloud.target, cloud)  # at start-up, not at the first escalation
    return cloud


def _agent_config(args: argparse.Namespace, pubkey: Path | None) -> AgentConfig:
    from edge_node.adapters.mqtt_agent import AgentConfig

    if pubkey is None:
        raise UserError("--mqtt needs --operator-pubkey FILE (the operator's Ed25519 public key): without it "
                        "the device could not tell signed config and models from forged ones")
    if not pubkey.is_file():
        raise UserError(f"--operator-pubkey {pubkey}: no such file")
    host, port = parse_host_port(args.mqtt, what="--mqtt")
    require_tls(host, tls=args.mqtt_tls_ca is not None, insecure=args.insecure, what=f"--mqtt {args.mqtt}",
                tls_flag="--mqtt-tls-ca")
    password = read_secret(args.mqtt_password_file, "the MQTT password file") if args.mqtt_password_file else None
    try:
        return AgentConfig(
            fleet=args.fleet, device_id=args.device_id, state_dir=args.state_dir / "agent", host=host,
            port=port, username=args.mqtt_user or args.device_id, password=password,
            operator_pubkey=pubkey, require_signed=True, tls_ca=args.mqtt_tls_ca, insecure=args.insecure,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None


def cmd_run(args: argparse.Namespace) -> int:
    from edge_node.daemon.daemon import EdgeDaemon

    return EdgeDaemon(config_from_args(args)).run()
