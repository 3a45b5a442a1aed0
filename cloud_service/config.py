"""The one typed configuration object of a cloud-service process, built by the CLI and passed down."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import UserError
from shared.net import is_loopback, target_host

log = logging.getLogger(__name__)

# Defaults, named so the CLI, the docs and the tests agree on them.
DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_WAIT_MS = 10.0  # how long the first request of a batch waits for company
DEFAULT_QUEUE_SIZE = 64  # requests waiting for the model before RESOURCE_EXHAUSTED
DEFAULT_MAX_AUDIO_S = 30.0  # one Whisper window; longer audio is refused, not silently cut
DEFAULT_RESULT_TTL_S = 24 * 3600
DEFAULT_RATE_LIMIT_PER_MIN = 600
DEFAULT_STREAM = "asr:jobs"
DEFAULT_GROUP = "asr-workers"
DEFAULT_CLAIM_MIN_IDLE_MS = 60_000  # a job pending this long belongs to a dead worker
DEFAULT_WORKER_BATCH = 8
DEFAULT_REDIS_RETRY_S = 2.0  # while Redis is down, try it again at most this often
# Compressed audio decoding at once (each holds at most max_audio_s of 2-channel 48 kHz float32, ~12 MB at 30 s,
# plus its copies); one more is RESOURCE_EXHAUSTED.
DEFAULT_MAX_DECODES = 4
DEFAULT_AUTH_CACHE_TTL_S = 30.0  # a verified token hash is used this long without asking Redis
# ... and while Redis cannot be reached, for at most this long after Redis last vouched for it: a token revoked
# during an outage stops working this soon (UNAVAILABLE), instead of lasting the whole outage.
DEFAULT_AUTH_CACHE_MAX_AGE_S = 60.0
DEFAULT_MAX_JOB_ATTEMPTS = 3  # deliveries of a Submit job before it is dead-lettered
DEFAULT_OAUTH_TOKEN_TTL_S = 900  # 15 minutes: short, so a leaked access token soon stops working on its own
DEFAULT_LISTEN = "127.0.0.1:50051"  # loopback: serving the network is a decision (TLS, or --insecure)


@dataclass(frozen=True)
class TlsConfig:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None  # set: mTLS, clients must present a certificate signed by this CA


@dataclass(frozen=True)
class CloudConfig:
    model: str = "base"  # a name (models/NAME.pt) or a checkpoint path
    models_root: Path = Path("models")  # where checkpoints and edge artifacts (FetchModel) live
    device: str = "auto"  # auto: CUDA with fp16 when present, else CPU fp32
    threads: int = 0  # torch intra-op threads; 0: torch's default (one per core)
    pack: bool = False  # lay short clips of one group into shared 30 s windows (cloud_service/asr/packing.py)
    quantize: str = "none"  # "int8": dynamic int8 Linear layers on the CPU (cloud_service/asr/quantize.py)
    beam_size: int = 5
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    max_batch: int = DEFAULT_MAX_BATCH
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    queue_size: int = DEFAULT_QUEUE_SIZE
    max_audio_s: float = DEFAULT_MAX_AUDIO_S
    max_decodes: int = DEFAULT_MAX_DECODES
    auth_cache_ttl_s: float = DEFAULT_AUTH_CACHE_TTL_S
    auth_cache_max_age_s: float = DEFAULT_AUTH_CACHE_MAX_AGE_S
    # May hold a password, so not in repr. None: no dedup, no registry (then auth must be off).
    redis_url: str | None = field(default=None, repr=False)
    redis_retry_s: float = DEFAULT_REDIS_RETRY_S
    result_ttl_s: int = DEFAULT_RESULT_TTL_S
    rate_limit_per_min: int = DEFAULT_RATE_LIMIT_PER_MIN  # 0: unlimited
    auth: bool = True
    tls: TlsConfig | None = None
    fleet: str = "default"
    stream: str = DEFAULT_STREAM
    group: str = DEFAULT_GROUP
    consumer: str = "worker-1"
    worker_batch: int = DEFAULT_WORKER_BATCH
    claim_min_idle_ms: int = DEFAULT_CLAIM_MIN_IDLE_MS
    max_job_attempts: int = DEFAULT_MAX_JOB_ATTEMPTS
    dead_letter_stream: str = ""  # "": the job stream's name + ":dead"
    mqtt_host: str | None = None
    mqtt_port: int = 1883
    mqtt_user: str | None = None
    mqtt_password: str | None = field(default=None, repr=False)  # read from a file; never printed
    mqtt_tls_ca: Path | None = None  # set: TLS to the broker, verifying it against this CA
    heartbeat_file: Path | None = None  # touched every loop: the container health check
    grace_s: float = 5.0  # graceful-shutdown time for in-flight RPCs
    insecure: bool = False  # allow plaintext gRPC (serve) or MQTT (worker) off loopback (labs only)
    metrics_listen: str | None = None  # HOST:PORT of the Prometheus /metrics page; None: off
    http_listen: str | None = None  # HOST:PORT of the OpenAI-compatible REST API (cloud_service/http); None: off
    oauth_token_ttl_s: int = DEFAULT_OAUTH_TOKEN_TTL_S  # access tokens' lifetime (cloud_service/oauth)

    def checkpoint_path(self) -> Path:
        p = Path(self.model)
        if p.suffix == ".pt" or p.exists():
            return p
        return self.models_root / f"{self.model}.pt"

    @property
    def artifacts_dir(self) -> Path:
        return self.models_root

    @property
    def dead_letters(self) -> str:
        """The stream jobs go to after max_job_attempts failed deliveries."""
        return self.dead_letter_stream or f"{self.stream}:dead"


def check_listen(config: CloudConfig, address: str) -> None:
    """Refuse to serve plaintext gRPC on a non-loopback `address` unless `config.insecure`; warn when it does,
    and when device auth is off on one. Every server goes through this (`create_server`), not only the CLI's."""
    if is_loopback(target_host(address)):  # HOST:PORT, [V6]:PORT; port 0 (any free one) is fine here
        return
    if config.tls is None:
        if not config.insecure:
            raise UserError(f"--listen {address} is not a loopback address: give --tls-cert and --tls-key (TLS), "
                            f"or --insecure to serve plaintext (labs only)")
        log.warning("--insecure: serving plaintext gRPC on %s; audio, transcripts and any device token cross the "
                    "network unencrypted (edges refuse to send a token so)", address)
    if not config.auth:
        log.warning("--no-auth on %s: any client that reaches this address is served, no device token asked",
                    address)
