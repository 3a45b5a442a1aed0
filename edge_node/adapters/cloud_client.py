"""The edge's gRPC client for the cloud's EscalationService: TLS, a bearer token, a deadline per call.

`open_channel` and `call_metadata` are the edge's one way to reach the cloud over gRPC: the EscalationClient
and the model updater's FetchModel downloads both use them. So the transport rules live here, for every caller:
plaintext only to a loopback address unless the config says `insecure` (labs), and the bearer token never in
clear to a non-loopback address, `insecure` or not.

One attempt per call: retries are scheduled by the outbox sender with backoff and a circuit breaker, so a request
waiting for a retry is on disk, not in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from shared.errors import UserError
from shared.fsutil import read_secret, warn_if_exposed
from shared.net import is_loopback, require_tls, target_host
from shared.wire_audio import SAMPLE_RATE, WireEncoding, encode

if TYPE_CHECKING:
    import grpc
    import numpy as np

    from proto.asr.v1 import asr_pb2

log = logging.getLogger(__name__)

# Transient: the cloud is away, slow or shedding load. Anything else (INVALID_ARGUMENT, UNAUTHENTICATED, ...) will
# not get better by sending the same request again.
RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL"})


@dataclass(frozen=True)
class CloudClientConfig:
    target: str  # host:port
    device_id: str
    token: str = field(repr=False)  # never printed; "" sends no authorization metadata
    tls_ca: Path | None = None  # TLS when set (or when tls_cert is set)
    tls_cert: Path | None = None  # client certificate for mTLS
    tls_key: Path | None = None
    timeout_s: float = 30.0
    insecure: bool = False  # allow plaintext to a non-loopback target (labs; a token is still never sent so)

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert)


# gRPC's own reconnect backoff grows to 120 s by default: after a cloud restart a device would wait up to two
# minutes before its outbox could drain. 10 s at most (the outbox sender adds its own jittered backoff on top).
CHANNEL_OPTIONS = (("grpc.keepalive_time_ms", 30_000), ("grpc.max_receive_message_length", 16 << 20),
                   ("grpc.initial_reconnect_backoff_ms", 1_000), ("grpc.max_reconnect_backoff_ms", 10_000))


def read_token(path: Path) -> str:
    token = read_secret(path, "token file")
    if not token:
        raise UserError(f"token file {path} is empty")
    return token


def audio_message(samples: np.ndarray, encoding: WireEncoding) -> asr_pb2.Audio:
    """16 kHz mono samples -> the request's `Audio`, encoded as chosen (WireEncoding names match the proto's)."""
    from proto.asr.v1 import asr_pb2

    return asr_pb2.Audio(encoding=encoding.name, sample_rate=SAMPLE_RATE,
                         data=encode(samples, encoding))


def check_transport(target: str, config: CloudClientConfig | None) -> None:
    """Refuse what `open_channel` must not open (UserError): plaintext to a non-loopback `target` without
    `insecure`, and plaintext to one with a token in any case. The CLI calls it too, to fail at start-up."""
    tls = config is not None and config.tls
    host = target_host(target)
    require_tls(host, tls=tls, insecure=config is not None and config.insecure,
                what=f"gRPC to the cloud {target}", tls_flag="--tls-ca")
    if config is not None and config.token and not tls and not is_loopback(host):
        raise UserError(f"gRPC to the cloud {target}: the device token is never sent in clear to a non-loopback "
                        f"address, --insecure or not; give --tls-ca (TLS)")


def open_channel(target: str, config: CloudClientConfig | None = None) -> grpc.Channel:
    """A channel to `target` secured as `config` says: TLS when it names a CA or a client certificate (mTLS
    with the certificate and key), keepalive and message-size options always; None: plaintext, which only a
    loopback target gets (labs, tests). `check_transport` says what is refused."""
    import grpc as g

    check_transport(target, config)
    options = list(CHANNEL_OPTIONS)
    if config is not None and config.tls:
        def read(p: Path | None) -> bytes | None:
            return p.read_bytes() if p else None

        if config.tls_key:
            warn_if_exposed(config.tls_key, "TLS client key")

        creds = g.ssl_channel_credentials(read(config.tls_ca), read(config.tls_key), read(config.tls_cert))
        return g.secure_channel(target, creds, options=options)
    return g.insecure_channel(target, options=options)


def call_metadata(config: CloudClientConfig | None, target: str) -> tuple[tuple[str, str], ...]:
    """The metadata every call to `target` carries: the device's bearer token, when one is configured. Checked
    again here (not only when the channel opened), since the token is what must never travel in clear."""
    if config is None or not config.token:
        return ()
    check_transport(target, config)
    return (("authorization", f"Bearer {config.token}"),)


class CloudError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.retryable = code in RETRYABLE


class EscalationClient:
    def __init__(self, config: CloudClientConfig) -> None:
        from proto.asr.v1 import asr_pb2_grpc

        self._config = config
        self._channel = open_channel(config.target, config)
        self._stub = asr_pb2_grpc.EscalationServiceStub(self._channel)
        self._metadata = call_metadata(config, config.target)

    def transcribe(
        self, request: asr_pb2.TranscribeRequest, timeout_s: float | None = None
    ) -> asr_pb2.TranscribeResponse:
        import grpc

        try:
            response: asr_pb2.TranscribeResponse = self._stub.Transcribe(
                request, timeout=timeout_s or self._config.timeout_s, metadata=self._metadata
            )
            return response
        except grpc.RpcError as exc:
            code = exc.code().name if exc.code() else "UNKNOWN"
            raise CloudError(code, exc.details() or "") from None

    def close(self) -> None:
        self._channel.close()
