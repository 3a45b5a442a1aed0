"""`edge-node agent`: the control-plane agent alone, parameters into a ParamsBox (no engine, no cloud).

The broker credentials come from the environment, never argv: $FLEET_MQTT_USERNAME, and the password from the
file $FLEET_MQTT_PASSWORD_FILE names (preferred) or $FLEET_MQTT_PASSWORD. The operator's public key is required
(`--pubkey`) unless `--allow-unsigned` says this is a lab; a broker off loopback needs `--tls-ca` or `--insecure`.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import UserError
from shared.fsutil import read_secret
from shared.net import INSECURE_HELP, parse_host_port, require_tls

if TYPE_CHECKING:
    from edge_node.adapters.mqtt_agent import AgentConfig


def add_agent_parser(sub: Any) -> None:
    p = sub.add_parser("agent", help="the MQTT control-plane agent alone: live parameters into a ParamsBox",
                       description="The control-plane agent alone: parameters into a ParamsBox. Credentials: "
                       "$FLEET_MQTT_USERNAME, $FLEET_MQTT_PASSWORD_FILE or $FLEET_MQTT_PASSWORD.")
    p.add_argument("--fleet", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT")
    p.add_argument("--state-dir", required=True,
                   help="persistent: the last accepted config and the desired-state high-water marks")
    p.add_argument("--pubkey", help="operator public key (PEM); required unless --allow-unsigned")
    p.add_argument("--allow-unsigned", action="store_true",
                   help="without --pubkey, accept unsigned desired state (labs only)")
    p.add_argument("--keepalive", type=int, default=30)
    p.add_argument("--tls-ca", help="CA certificate: connect to the broker with TLS")
    p.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
    p.set_defaults(func=cmd_agent)


def agent_config_from_args(args: argparse.Namespace, env: dict[str, str] | None = None) -> AgentConfig:
    """The arguments and the environment (credentials) -> the AgentConfig."""
    from edge_node.adapters.mqtt_agent import AgentConfig  # paho stays off the other commands' import path

    env = dict(os.environ) if env is None else env
    if not args.pubkey and not args.allow_unsigned:
        raise UserError("give --pubkey FILE (the operator's Ed25519 public key), or --allow-unsigned for a lab: "
                        "without a key the agent cannot tell signed desired state from forged")
    host, port = parse_host_port(args.broker, what="--broker")
    require_tls(host, tls=bool(args.tls_ca), insecure=args.insecure, what=f"--broker {args.broker}",
                tls_flag="--tls-ca")
    password = None
    if env.get("FLEET_MQTT_PASSWORD_FILE"):
        password = read_secret(env["FLEET_MQTT_PASSWORD_FILE"], "the MQTT password file")
    signed = bool(args.pubkey) or not args.allow_unsigned  # a given key is always insisted on
    try:
        return AgentConfig(
            fleet=args.fleet, device_id=args.device, state_dir=Path(args.state_dir), host=host, port=port,
            username=env.get("FLEET_MQTT_USERNAME"), password=password or env.get("FLEET_MQTT_PASSWORD"),
            operator_pubkey=Path(args.pubkey) if args.pubkey else None, require_signed=signed,
            keepalive_s=args.keepalive, tls_ca=Path(args.tls_ca) if args.tls_ca else None, insecure=args.insecure,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None


def cmd_agent(args: argparse.Namespace) -> int:
    from edge_node.adapters.mqtt_agent import DeviceAgent  # paho, as above
    from edge_node.core.desired_state import ParamsBox  # pydantic's fleet schema: not for other commands

    config = agent_config_from_args(args)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    agent = DeviceAgent(config, ParamsBox())
    agent.start()
    print("agent started", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    agent.stop()
    return 0
