"""Prometheus metrics of `edge-node run`, on `--metrics-listen HOST:PORT` (plain HTTP: counts, no secrets).

The daemon already keeps its counters (segments, escalations, budget refusals, ...) for the MQTT state, and the
outbox keeps its own in SQLite: a collector reads both at scrape time (`EdgeSnapshot`), so nothing is counted
twice and nothing can drift from `fleetctl status`. Only the real-time factor is observed as it happens. One
registry per daemon, made here and passed nowhere else: no import-time global metric.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.metrics_http import Exporter, start_exporter

log = logging.getLogger(__name__)

# processing seconds per audio second: below 1 the edge keeps up with real time
RTF_BUCKETS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)
# The daemon's counters (EdgeDaemon.counters) and what they mean.
DAEMON_COUNTERS = {
    "segments": "segments transcribed on the edge",
    "escalated": "segments queued for the cloud",
    "over_budget": "escalations refused by the escalation budget (the edge text stood)",
    "revisions": "cloud answers received",
    "quarantined": "escalations whose outbox row could not be read",
    "outbox_write_failed": "escalations that could not be queued (a full disk)",
    "sender_errors": "sender rounds that failed and were retried",
}
# The outbox's own counters (Outbox.stats()), besides "pending".
OUTBOX_COUNTERS = {
    "enqueued": "escalations written to the outbox",
    "answered": "escalations answered by the cloud",
    "dropped_full": "escalations dropped because the outbox was full (oldest first)",
    "rejected": "escalations the cloud refused for good and that were dropped",
}


@dataclass(frozen=True)
class EdgeSnapshot:
    device: str
    counters: Mapping[str, float]
    outbox: Mapping[str, int] | None  # None: the outbox could not be read this time
    model: tuple[str, str] | None  # (name, version) serving now; None: an unsigned lab model directory
    config_version: int  # the live parameters' version in force (0: none received)


class _DaemonCollector(Collector):
    def __init__(self, snapshot: Callable[[], EdgeSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        try:
            snap = self._snapshot()
        except Exception:  # a scrape never takes the daemon down; it just lacks these series this time
            log.exception("metrics snapshot failed")
            return
        for name, doc in DAEMON_COUNTERS.items():
            yield CounterMetricFamily(f"edge_{name}", doc, value=float(snap.counters.get(name, 0)))
        if snap.outbox is not None:
            yield GaugeMetricFamily("edge_outbox_depth", "escalations waiting in the outbox",
                                    value=float(snap.outbox.get("pending", 0)))
            for name, doc in OUTBOX_COUNTERS.items():
                yield CounterMetricFamily(f"edge_outbox_{name}", doc, value=float(snap.outbox.get(name, 0)))
        info = InfoMetricFamily("edge_model", "the model serving now", labels=["device"])
        name, version = snap.model or ("unknown", "unknown")
        info.add_metric([snap.device], {"model": name, "version": version})
        yield info
        yield GaugeMetricFamily("edge_config_version", "version of the live parameters in force (0: none)",
                                value=float(snap.config_version))


@dataclass(frozen=True)
class EdgeMetrics:
    registry: CollectorRegistry
    rtf: Histogram
    audio_seconds: Counter
    processing_seconds: Counter

    @classmethod
    def create(cls, snapshot: Callable[[], EdgeSnapshot]) -> EdgeMetrics:
        r = CollectorRegistry()
        r.register(_DaemonCollector(snapshot))
        return cls(
            registry=r,
            rtf=Histogram("edge_rtf", "real-time factor per chunk: processing seconds / audio seconds",
                          buckets=RTF_BUCKETS, registry=r),
            audio_seconds=Counter("edge_audio_seconds", "audio seconds transcribed", registry=r),
            processing_seconds=Counter("edge_processing_seconds", "seconds spent transcribing", registry=r),
        )

    def chunk_done(self, audio_s: float, processing_s: float) -> None:
        if audio_s <= 0:
            return
        self.rtf.observe(processing_s / audio_s)
        self.audio_seconds.inc(audio_s)
        self.processing_seconds.inc(processing_s)

    def serve(self, listen: str) -> Exporter:
        """http://HOST:PORT/metrics in a daemon thread (`PORT` or `:PORT`: on 127.0.0.1); UserError if taken."""
        exporter = start_exporter(self.registry, listen)
        log.info("metrics on http://%s/metrics", listen)
        return exporter
