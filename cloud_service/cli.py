"""Argument parsing for `cloud-service serve` and `cloud-service worker`, and the CloudConfig they build."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from cloud_service import config as c
from cloud_service.asr.quantize import QUANTIZE_CHOICES
from cloud_service.config import CloudConfig, TlsConfig
from cloud_service.oauth.tokens import MAX_TOKEN_TTL_S
from shared.cli import add_redis_options, redis_url
from shared.errors import UserError
from shared.fsutil import read_secret
from shared.net import INSECURE_HELP, require_tls


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="base", help="checkpoint name (models/NAME.pt) or path (default: base)")
    p.add_argument("--models-root", default="models", help="checkpoints and edge artifacts (default: models)")
    p.add_argument("--device", default="auto", help="auto (CUDA+fp16 if present, else CPU fp32), cpu, cuda:0")
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: one per core)")
    p.add_argument("--pack", action="store_true",
                   help="pack short clips (<= 10 s, language given) into shared 30 s windows: one encoder pass for "
                   "several; an unclear split is decoded again clip by clip")
    p.add_argument("--quantize", choices=QUANTIZE_CHOICES, default="none",
                   help="int8: dynamic int8 quantization of the Linear layers, CPU only (default: none, fp32/fp16)")
    add_redis_options(p, "CLOUD_REDIS_URL")
    p.add_argument("--result-ttl-s", type=int, default=c.DEFAULT_RESULT_TTL_S)
    p.add_argument("--max-audio-s", type=float, default=c.DEFAULT_MAX_AUDIO_S)
    p.add_argument("--fleet", default="default", help="fleet name in MQTT topics")
    p.add_argument("--stream", default=c.DEFAULT_STREAM, help="Redis Stream of Submit jobs")
    p.add_argument("--group", default=c.DEFAULT_GROUP, help="consumer group of the workers")
    p.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve Prometheus /metrics here (PORT or :PORT: on 127.0.0.1; default: off)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloud-service", description="Whisper cloud service")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gRPC EscalationService")
    _common(s)
    s.add_argument("--listen", default=c.DEFAULT_LISTEN,
                   help=f"HOST:PORT (default {c.DEFAULT_LISTEN}); a non-loopback address needs --tls-cert and "
                   "--tls-key, or --insecure")
    s.add_argument("--max-batch", type=int, default=c.DEFAULT_MAX_BATCH)
    s.add_argument("--max-wait-ms", type=float, default=c.DEFAULT_MAX_WAIT_MS)
    s.add_argument("--queue-size", type=int, default=c.DEFAULT_QUEUE_SIZE)
    s.add_argument("--max-decodes", type=int, default=c.DEFAULT_MAX_DECODES,
                   help="compressed-audio decodes at once; more is RESOURCE_EXHAUSTED (default %(default)s)")
    s.add_argument("--auth-cache-s", type=float, default=c.DEFAULT_AUTH_CACHE_TTL_S,
                   help="use a verified token hash this long without asking Redis (default %(default)s)")
    s.add_argument("--auth-cache-max-age-s", type=float, default=c.DEFAULT_AUTH_CACHE_MAX_AGE_S,
                   help="while Redis is down, trust a cached hash at most this long after Redis last confirmed it; "
                   "then UNAVAILABLE (default %(default)s)")
    s.add_argument(
        "--rate-limit", type=int, default=c.DEFAULT_RATE_LIMIT_PER_MIN, help="per device per minute"
    )
    s.add_argument(
        "--no-auth", action="store_true", help="accept requests without a device token (labs only)"
    )
    s.add_argument("--http", metavar="HOST:PORT",
                   help="also serve the OpenAI-compatible REST API here (same model; HTTPS with --tls-cert/"
                   "--tls-key; non-loopback needs TLS or --insecure)")
    s.add_argument("--oauth-token-ttl-s", type=int, default=c.DEFAULT_OAUTH_TOKEN_TTL_S,
                   help="lifetime of the OAuth2 access tokens POST /oauth/token issues (default %(default)s)")
    s.add_argument("--tls-cert", help="server certificate (PEM)")
    s.add_argument("--tls-key", help="server private key (PEM)")
    s.add_argument("--tls-client-ca", help="CA for client certificates: turns on mTLS")
    s.add_argument("--grace-s", type=float, default=5.0, help="time in-flight RPCs get on SIGTERM")
    s.add_argument("--insecure", action="store_true", help=INSECURE_HELP)

    w = sub.add_parser("worker", help="decode Submit jobs from the Redis Stream, publish results to MQTT")
    _common(w)
    w.add_argument("--consumer", default=f"{socket.gethostname()}-{os.getpid()}", help="consumer name")
    w.add_argument("--batch", type=int, default=c.DEFAULT_WORKER_BATCH, help="stream entries per batch")
    w.add_argument(
        "--claim-min-idle-ms",
        type=int,
        default=c.DEFAULT_CLAIM_MIN_IDLE_MS,
        help="reclaim jobs pending this long (their worker died)",
    )
    w.add_argument("--max-attempts", type=int, default=c.DEFAULT_MAX_JOB_ATTEMPTS,
                   help="deliveries of a failing job before it is dead-lettered (default %(default)s)")
    w.add_argument("--dead-letter-stream", default="", help="where failed jobs go (default: STREAM:dead)")
    w.add_argument("--mqtt-host", help="broker for results (none: results only in Redis)")
    w.add_argument("--mqtt-port", type=int, default=1883)
    w.add_argument("--mqtt-user", help="broker user name (the broker's ACL gives it the results topics)")
    w.add_argument("--mqtt-password-file", type=Path, help="file holding the broker password")
    w.add_argument("--mqtt-tls-ca", type=Path, help="CA certificate: connect to the broker with TLS")
    w.add_argument("--heartbeat-file", type=Path, help="touched every loop (container health checks)")
    w.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
    return p


def _tls(args: argparse.Namespace) -> TlsConfig | None:
    cert, key, ca = (
        getattr(args, "tls_cert", None),
        getattr(args, "tls_key", None),
        getattr(args, "tls_client_ca", None),
    )
    if not cert and not key:
        if ca:
            raise UserError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (cert and key):
        raise UserError("TLS needs both --tls-cert and --tls-key")
    return TlsConfig(Path(cert), Path(key), Path(ca) if ca else None)


def _checked_values(args: argparse.Namespace) -> tuple[float, float]:
    """Refuse values no process can run with (UserError); returns the token cache's (ttl, max age)."""
    positive = {
        "--beam-size": args.beam_size,
        "--max-audio-s": args.max_audio_s,
        "--max-batch": getattr(args, "max_batch", 1),
        "--queue-size": getattr(args, "queue_size", 1),
        "--batch": getattr(args, "batch", 1),
        "--max-decodes": getattr(args, "max_decodes", 1),
        "--auth-cache-s": getattr(args, "auth_cache_s", 1),
        "--max-attempts": getattr(args, "max_attempts", 1),
        "--oauth-token-ttl-s": getattr(args, "oauth_token_ttl_s", 1),
    }
    for flag, value in positive.items():
        if value <= 0:
            raise UserError(f"{flag} must be positive, got {value}")
    if getattr(args, "oauth_token_ttl_s", 1) > MAX_TOKEN_TTL_S:
        raise UserError(f"--oauth-token-ttl-s must be at most {MAX_TOKEN_TTL_S} (a day)")
    ttl = getattr(args, "auth_cache_s", c.DEFAULT_AUTH_CACHE_TTL_S)
    max_age = getattr(args, "auth_cache_max_age_s", c.DEFAULT_AUTH_CACHE_MAX_AGE_S)
    if max_age < ttl:
        raise UserError(f"--auth-cache-max-age-s ({max_age:g}) must be at least --auth-cache-s ({ttl:g})")
    return ttl, max_age


def config_from_args(args: argparse.Namespace) -> CloudConfig:
    ttl, max_age = _checked_values(args)
    if args.metrics_listen:  # a malformed address fails now, not after the model loads
        from shared.metrics_http import parse_metrics_listen

        parse_metrics_listen(args.metrics_listen)
    if getattr(args, "mqtt_host", None):  # at start-up, before the model loads
        require_tls(args.mqtt_host, tls=args.mqtt_tls_ca is not None, insecure=args.insecure,
                    what=f"--mqtt-host {args.mqtt_host}", tls_flag="--mqtt-tls-ca")
    return CloudConfig(
        model=args.model,
        models_root=Path(args.models_root),
        device=args.device,
        threads=args.threads,
        quantize=args.quantize,
        pack=args.pack,
        beam_size=args.beam_size,
        max_batch=getattr(args, "max_batch", c.DEFAULT_MAX_BATCH),
        max_wait_ms=getattr(args, "max_wait_ms", c.DEFAULT_MAX_WAIT_MS),
        queue_size=getattr(args, "queue_size", c.DEFAULT_QUEUE_SIZE),
        max_audio_s=args.max_audio_s,
        max_decodes=getattr(args, "max_decodes", c.DEFAULT_MAX_DECODES),
        auth_cache_ttl_s=ttl,
        auth_cache_max_age_s=max_age,
        redis_url=redis_url(args),
        result_ttl_s=args.result_ttl_s,
        rate_limit_per_min=getattr(args, "rate_limit", c.DEFAULT_RATE_LIMIT_PER_MIN),
        auth=not getattr(args, "no_auth", False),
        tls=_tls(args),
        fleet=args.fleet,
        stream=args.stream,
        group=args.group,
        consumer=getattr(args, "consumer", "worker-1"),
        worker_batch=getattr(args, "batch", c.DEFAULT_WORKER_BATCH),
        claim_min_idle_ms=getattr(args, "claim_min_idle_ms", c.DEFAULT_CLAIM_MIN_IDLE_MS),
        max_job_attempts=getattr(args, "max_attempts", c.DEFAULT_MAX_JOB_ATTEMPTS),
        dead_letter_stream=getattr(args, "dead_letter_stream", ""),
        mqtt_host=getattr(args, "mqtt_host", None),
        mqtt_user=getattr(args, "mqtt_user", None),
        mqtt_password=read_secret(args.mqtt_password_file, "the MQTT password file")
        if getattr(args, "mqtt_password_file", None) else None,
        mqtt_tls_ca=getattr(args, "mqtt_tls_ca", None),
        heartbeat_file=getattr(args, "heartbeat_file", None),
        mqtt_port=getattr(args, "mqtt_port", 1883),
        grace_s=getattr(args, "grace_s", 5.0),
        insecure=args.insecure,
        metrics_listen=args.metrics_listen,
        http_listen=getattr(args, "http", None),
        oauth_token_ttl_s=getattr(args, "oauth_token_ttl_s", c.DEFAULT_OAUTH_TOKEN_TTL_S),
    )


def run(args: argparse.Namespace, config: CloudConfig) -> int:
    if not config.checkpoint_path().is_file():
        raise UserError(
            f"checkpoint {config.checkpoint_path()} not found (run `fleetctl model fetch {args.model}`)"
        )
    if args.command == "serve":
        from cloud_service.api.server import serve

        serve(config, args.listen)
    else:
        from cloud_service.jobs.worker import run_worker

        run_worker(config)
    return 0
