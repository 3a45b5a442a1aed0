"""`edge-node wyoming`: arguments -> one WyomingConfig -> the Wyoming server."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from edge_node.cli.run import _int_at_least, _positive_seconds
from edge_node.core.escalation_policy import EscalationPolicy
from edge_node.engine.config import DEFAULT_MODEL_DIR, EdgeConfig
from shared.errors import UserError
from shared.net import INSECURE_HELP, is_loopback

if TYPE_CHECKING:
    from edge_node.daemon.wyoming_server import WyomingConfig


def add_wyoming_parser(sub: Any) -> None:
    p = sub.add_parser("wyoming", help="Wyoming protocol ASR server (Home Assistant, voice satellites)")
    p.add_argument("--uri", default="tcp://127.0.0.1:10300", help="tcp://HOST:PORT to listen on "
                   "(default tcp://127.0.0.1:10300)")
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--threads", type=_int_at_least(0), default=0)
    p.add_argument("--device-id", default="wyoming", help="device id sent with escalations")
    p.add_argument("--cloud", help="cloud HOST:PORT: escalate doubtful utterances (omit: edge only)")
    p.add_argument("--token-file", type=Path, help="file holding this device's bearer token")
    p.add_argument("--tls-ca", type=Path, help="CA certificate: use TLS to the cloud")
    p.add_argument("--tls-cert", type=Path, help="client certificate (mTLS)")
    p.add_argument("--tls-key", type=Path, help="client key (mTLS)")
    p.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
    p.add_argument("--cloud-deadline-s", type=_positive_seconds, default=2.0,
                   help="wait this long for the cloud's text, then answer with the edge's (default 2)")
    p.add_argument("--late-answer-s", type=_non_negative_seconds, default=30.0,
                   help="keep a call past --cloud-deadline-s open this much longer, so a late cloud answer is "
                   "logged with its segment id (0: cancel it at the deadline; default 30)")
    p.add_argument("--escalate-logprob-below", type=float, default=None, metavar="LOGPROB",
                   help="also escalate utterances whose mean token log-prob is below this")
    p.add_argument("--budget", type=float, default=None, metavar="FRACTION",
                   help="most share of audio seconds escalated per rolling 10 min (default 0.5)")
    p.add_argument("--max-audio-s", type=_positive_seconds, default=30.0,
                   help="longest utterance; more: error event and disconnect (default 30)")
    p.add_argument("--max-connections", type=_int_at_least(1), default=8)
    p.add_argument("--idle-timeout-s", type=_positive_seconds, default=30.0,
                   help="close a connection silent this long (default 30)")
    p.add_argument("--state-dir", type=Path, default=Path("state"), help="accepted for parity with `run` "
                   "(no outbox is kept: see docs/wyoming.md)")
    p.set_defaults(func=cmd_wyoming)


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, not {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, not {text}")
    return value


def _listen(uri: str) -> tuple[str, int]:
    u = urlparse(uri)
    if u.scheme != "tcp" or not u.hostname or u.port is None:
        raise UserError(f"--uri {uri}: expected tcp://HOST:PORT")
    return u.hostname, u.port


def config_from_args(args: argparse.Namespace) -> WyomingConfig:
    from dataclasses import replace

    from edge_node.cli.run import _cloud_config
    from edge_node.daemon.wyoming_server import WyomingConfig

    host, port = _listen(args.uri)
    if not is_loopback(host):
        # The Wyoming protocol has no TLS nor authentication: say so once, loudly (Home Assistant needs it
        # reachable on the LAN).
        import logging

        logging.getLogger(__name__).warning("wyoming listens on %s: the protocol is plaintext and "
                                            "unauthenticated; keep it on a trusted network", host)
    policy = EscalationPolicy(escalate_logprob_below=args.escalate_logprob_below)
    if args.budget is not None:
        if not 0.0 <= args.budget <= 1.0:
            raise UserError(f"--budget is a share of audio seconds in [0, 1], not {args.budget}")
        policy = replace(policy, budget_fraction=args.budget)
    if args.cloud:
        args.timeout = args.cloud_deadline_s + args.late_answer_s  # the RPC's own deadline
    cloud = _cloud_config(args) if args.cloud else None
    edge = EdgeConfig(model_dir=args.model_dir, threads=args.threads)
    return WyomingConfig(host=host, port=port, edge=edge, device_id=args.device_id, policy=policy, cloud=cloud,
                         cloud_deadline_s=args.cloud_deadline_s, late_answer_s=args.late_answer_s,
                         max_audio_s=args.max_audio_s,
                         idle_timeout_s=args.idle_timeout_s, max_connections=args.max_connections)


def cmd_wyoming(args: argparse.Namespace) -> int:
    from edge_node.daemon.wyoming_server import run

    return run(config_from_args(args))
