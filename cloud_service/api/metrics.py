"""Prometheus metrics of a cloud-service process (`serve` or `worker`), on `--metrics-listen HOST:PORT`.

One `CollectorRegistry` per process, made by `CloudMetrics.create` where the server (or worker) is set up and passed
down: no import-time global metric, so two servers in one test process never share counters. The exporter is
plain HTTP: metrics carry no secret (device ids, counts, the model's name), so a non-loopback address is allowed
without TLS; keep it on a private network all the same (docs/metrics.md).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from shared.metrics_http import Exporter, start_exporter

MAX_DEVICE_LABELS = 1000  # distinct device label values kept; later devices count under device="other"
OTHER_DEVICE = "other"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class DeviceLabels:
    """Bounds the `device` label's cardinality: the first `limit` devices seen keep their own series."""

    limit: int = MAX_DEVICE_LABELS
    _seen: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def label(self, device: str) -> str:
        with self._lock:
            if device in self._seen:
                return device
            if len(self._seen) < self.limit:
                self._seen.add(device)
                return device
        return OTHER_DEVICE


@dataclass(frozen=True)
class CloudMetrics:
    registry: CollectorRegistry
    grpc_requests: Counter  # method, code
    queue_depth: Gauge
    batch_size: Histogram
    inference_seconds: Histogram
    request_seconds: Histogram  # end to end, Transcribe, from admission to the answer
    escalations: Counter  # device (bounded)
    redis_errors: Counter  # operation
    jobs: Counter  # outcome: done, failed, dead_lettered (the worker)
    model: Info
    devices: DeviceLabels = field(default_factory=DeviceLabels)

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None, max_devices: int = MAX_DEVICE_LABELS) -> CloudMetrics:
        r = registry if registry is not None else CollectorRegistry()
        return cls(
            registry=r,
            grpc_requests=Counter("asr_grpc_requests", "gRPC calls answered, by method and status code",
                                  ["method", "code"], registry=r),
            queue_depth=Gauge("asr_queue_depth", "requests waiting in the batcher for the model", registry=r),
            batch_size=Histogram("asr_batch_size", "requests decoded per model batch", buckets=BATCH_BUCKETS,
                                 registry=r),
            inference_seconds=Histogram("asr_inference_seconds", "model time per batch", buckets=LATENCY_BUCKETS,
                                        registry=r),
            request_seconds=Histogram("asr_request_seconds", "Transcribe end to end, admission to answer",
                                      buckets=LATENCY_BUCKETS, registry=r),
            escalations=Counter("asr_escalations", "Transcribe calls admitted, by device (first "
                                f"{max_devices} devices; the rest as device=\"other\")", ["device"], registry=r),
            redis_errors=Counter("asr_redis_errors", "Redis calls that failed (connection, timeout)",
                                 ["operation"], registry=r),
            jobs=Counter("asr_jobs", "Submit jobs handled by the worker, by outcome", ["outcome"], registry=r),
            model=Info("asr_model", "the model this process serves", registry=r),
            devices=DeviceLabels(max_devices),
        )

    def set_model(self, model: str, version: str) -> None:
        self.model.info({"model": model, "version": version})

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def batch_done(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference_seconds.observe(seconds)

    def escalation(self, device: str) -> None:
        self.escalations.labels(device=self.devices.label(device)).inc()

    def redis_error(self, operation: str) -> None:
        self.redis_errors.labels(operation=operation).inc()

    def serve(self, listen: str) -> Exporter:
        return start_exporter(self.registry, listen)


def _code_name(context: grpc.aio.ServicerContext, default: str) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):  # grpc.aio keeps the raw integer set by abort()
        for c in grpc.StatusCode:
            if c.value[0] == code:
                return str(c.name)
    return default


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call by method and final status. Put it first: it then also sees calls the auth
    interceptor refuses (UNAUTHENTICATED) with their real code."""

    def __init__(self, metrics: CloudMetrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method.rsplit("/", 1)[-1]
        count = self.metrics.grpc_requests

        def done(context: grpc.aio.ServicerContext, failed: BaseException | None) -> None:
            if isinstance(failed, grpc.aio.AbortError) or failed is None:
                code = _code_name(context, "OK" if failed is None else "UNKNOWN")
            else:
                code = "UNKNOWN" if isinstance(failed, Exception) else "CANCELLED"
            count.labels(method=method, code=code).inc()

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    reply = await inner_uu(request, context)
                except BaseException as exc:
                    done(context, exc)
                    raise
                done(context, None)
                return reply

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    async for item in inner_us(request, context):
                        yield item
                except BaseException as exc:
                    done(context, exc)
                    raise
                done(context, None)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler
