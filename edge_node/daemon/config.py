"""`DaemonConfig`: everything `edge-node run` is started with, built by edge_node/cli/run.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_node.adapters.cloud_client import CloudClientConfig
from edge_node.adapters.mqtt_agent import AgentConfig
from edge_node.core.escalation_policy import EscalationPolicy
from edge_node.daemon.outbox import OutboxLimits
from edge_node.daemon.retry import BackoffPolicy, BreakerPolicy
from edge_node.engine.config import EdgeConfig
from shared.wire_audio import WireEncoding


@dataclass(frozen=True)
class DaemonConfig:
    source: str  # a file, a directory, or "-" for PCM16 16 kHz mono on stdin
    device_id: str
    state_dir: Path
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    policy: EscalationPolicy = field(default_factory=EscalationPolicy)
    cloud: CloudClientConfig | None = None  # None: edge only
    outbox_key_file: Path | None = None  # default: state_dir/outbox.key, made on first start
    outbox_limits: OutboxLimits = field(default_factory=OutboxLimits)
    wire: WireEncoding = WireEncoding.FLAC
    events: Path | None = None  # default: stdout
    exit_when_drained: bool | None = None  # default: yes for a file or stdin, no for a directory
    heartbeat_file: Path | None = None
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    stream_chunk_s: float = 20.0
    in_flight: int = 4  # concurrent escalation calls: the cloud batches requests that arrive together
    agent: AgentConfig | None = None  # MQTT control plane: live parameters, model rollouts, state
    operator_pubkey: Path | None = None  # verifies model artifacts pushed over MQTT
    metrics_listen: str | None = None  # HOST:PORT of the Prometheus /metrics page; None: off

    def __post_init__(self) -> None:
        # The CLI refuses such values with a message naming the flag; this is the invariant for other callers.
        if self.in_flight < 1:
            raise ValueError(f"DaemonConfig.in_flight must be >= 1, not {self.in_flight}")
        if not self.stream_chunk_s > 0:
            raise ValueError(f"DaemonConfig.stream_chunk_s must be > 0, not {self.stream_chunk_s}")

    @property
    def source_kind(self) -> str:
        if self.source == "-":
            return "stdin"
        return "dir" if Path(self.source).is_dir() else "file"
