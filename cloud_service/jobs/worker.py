"""`cloud-service worker`: decode jobs from the Redis Stream in batches, exactly once per segment.

Each round first reclaims entries another consumer has held longer than `claim_min_idle_ms` (XAUTOCLAIM: that
worker died), then reads new ones (XREADGROUP), up to `worker_batch` entries decoded as one batch. Every job
carries the device it was authenticated as at admission; its result and "published" mark are keyed by that
device and the segment id, and it goes to that device's results topic. A result is written with SET NX, so
however many workers race for a job only one result and one completion count exist; then it is published to
MQTT (QoS 1) and the entry is acknowledged (XACK). A crash between the publish and the "published" mark may
publish twice, never zero times; subscribers dedupe by segment_id.

A batch that raises is decoded again item by item (`run_isolated`): the job that breaks the model fails alone. A
failed job stays pending, is delivered again, and after `max_job_attempts` deliveries is dead-lettered
(`dead_letter.py`) and acknowledged, so a poison pill never crashes the worker or comes back forever.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from cloud_service.api.limits import check_device_id, check_segment_owner, check_transcribe_request
from cloud_service.api.messages import parse_request, to_asr_request, to_json, to_response
from cloud_service.api.metrics import CloudMetrics
from cloud_service.asr.audio_codec import AudioError
from cloud_service.asr.batching import run_isolated
from cloud_service.asr.model import AsrModel
from cloud_service.config import CloudConfig
from cloud_service.jobs import dead_letter
from cloud_service.jobs.store import STATS_KEY, published_key, result_key
from proto.asr.v1 import asr_pb2
from shared.errors import UserError
from shared.mqtt import MqttSettings, make_client, start_async
from shared.net import redact_url

log = logging.getLogger(__name__)

READ_BLOCK_MS = 1000  # how long one XREADGROUP waits for new jobs: bounds the SIGTERM reaction time
PUBLISH_TIMEOUT_S = 10.0


def results_topic(fleet: str, device: str) -> str:
    return f"fleet/{fleet}/devices/{device}/results"


@dataclass(frozen=True)
class Job:
    entry_id: str
    fields: dict[bytes, bytes]
    deliveries: int = 1  # this delivery included: 1 for a new entry, more for a reclaimed one


@dataclass(frozen=True)
class Parsed:
    job: Job
    device: str  # recorded by the server at admission: the namespace of the result, never the body's claim
    req: asr_pb2.TranscribeRequest


def parse_job(job: Job) -> Parsed:
    """The job's request and admitting device, checked as the server checked them. KeyError / ValueError for a
    job no worker can use: malformed, or queued without its device."""
    from google.protobuf.message import DecodeError

    try:
        req = parse_request(job.fields[b"request"])
    except DecodeError as exc:
        raise ValueError(f"undecodable request: {exc}") from None
    raw = job.fields.get(b"device")
    if not raw:
        raise ValueError("no authenticated device recorded at admission (queued by an older server?)")
    device = raw.decode(errors="replace")
    check_transcribe_request(req)
    check_device_id(device)
    check_segment_owner(req.segment_id, device)
    return Parsed(job, device, req)


def mqtt_settings(config: CloudConfig) -> MqttSettings | None:
    """Where the worker publishes results (None: no broker configured, results only in Redis)."""
    if not config.mqtt_host:
        return None
    return MqttSettings(host=config.mqtt_host, port=config.mqtt_port, client_id=f"asr-{config.consumer}",
                        username=config.mqtt_user, password=config.mqtt_password, tls_ca=config.mqtt_tls_ca,
                        insecure=config.insecure)


class MqttPublisher:
    """A paho-mqtt 2.x client (shared.mqtt) on its own network thread; `publish` waits for the QoS 1 ack."""

    def __init__(self, settings: MqttSettings) -> None:
        self.client = make_client(settings)
        start_async(self.client, settings)

    def publish(self, topic: str, payload: str) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(PUBLISH_TIMEOUT_S)
        if not info.is_published():
            raise TimeoutError(f"MQTT publish to {topic} not acknowledged in {PUBLISH_TIMEOUT_S:.0f} s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class StreamWorker:
    def __init__(
        self, config: CloudConfig, asr: AsrModel, redis: Any, publisher: MqttPublisher | None,
        metrics: CloudMetrics | None = None,
    ) -> None:
        self.config = config
        self.asr = asr
        self.redis = redis
        self.publisher = publisher
        self.metrics = metrics or CloudMetrics.create()
        self.metrics.set_model(asr.name, asr.version)
        self.stop_event = threading.Event()

    def ensure_group(self) -> None:
        from redis.exceptions import ResponseError

        try:  # from "0": jobs queued before the first worker ever started are not skipped
            self.redis.xgroup_create(self.config.stream, self.config.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _claim(self, count: int) -> list[Job]:
        res = self.redis.xautoclaim(
            self.config.stream,
            self.config.group,
            self.config.consumer,
            min_idle_time=self.config.claim_min_idle_ms,
            start_id="0-0",
            count=count,
        )
        claimed = [(_s(eid), fields) for eid, fields in res[1] if fields]
        if claimed:
            log.info("reclaimed %d jobs (their worker died, or their decode failed)", len(claimed))
        cfg = self.config
        return [Job(eid, fields, dead_letter.deliveries(self.redis, cfg.stream, cfg.group, eid))
                for eid, fields in claimed]

    def _read(self, count: int, block_ms: int | None) -> list[Job]:
        res = self.redis.xreadgroup(
            self.config.group, self.config.consumer, {self.config.stream: ">"}, count=count, block=block_ms
        )
        return [Job(_s(eid), fields) for _stream, entries in res or [] for eid, fields in entries]

    def step(self, block_ms: int = READ_BLOCK_MS) -> int:
        """One round: reclaim, read, decode as one batch, store, publish, ack. Returns jobs handled."""
        jobs = self._claim(self.config.worker_batch)
        if len(jobs) < self.config.worker_batch:
            # BLOCK 0 would wait forever: with reclaimed work in hand, just top up without blocking.
            jobs += self._read(self.config.worker_batch - len(jobs), None if jobs else block_ms)
        if jobs:
            self._process(jobs)
        return len(jobs)

    def _process(self, jobs: list[Job]) -> None:
        todo = []
        for job in jobs:
            try:
                p = parse_job(job)
            except (KeyError, ValueError) as exc:
                log.error("dropping malformed job %s: %s", job.entry_id, exc)
                self._ack(job)
                continue
            existing = self.redis.get(result_key(p.device, p.req.segment_id))
            if existing is not None:  # done already (a retry, or a worker that died after storing)
                self._finish(p, None, existing)
                continue
            if job.deliveries > self.config.max_job_attempts:  # never finished: it may kill whoever decodes it
                error = dead_letter.last_error(self.redis, self.config.stream, job.entry_id)
                self._give_up(p, error or "the worker stopped (or died) during every delivery", job.deliveries - 1)
                continue
            try:
                todo.append((p, to_asr_request(p.req, self.asr, self.config.max_audio_s)))
            except (AudioError, ValueError) as exc:
                log.error("dropping job %s (segment %s): %s", job.entry_id, p.req.segment_id, exc)
                self.redis.hincrby(STATS_KEY, "jobs_invalid", 1)
                self._ack(job)
        if not todo:
            return
        t0 = time.perf_counter()
        results = run_isolated(self.asr.transcribe_batch, [a for _, a in todo])
        self.metrics.batch_done(len(todo), time.perf_counter() - t0)
        log.info("decoded %d jobs in %.0f ms", len(todo), (time.perf_counter() - t0) * 1000)
        for (p, _), res in zip(todo, results, strict=True):
            try:
                if isinstance(res, Exception):
                    raise res
                enqueued = float(p.job.fields.get(b"enqueued", b"0") or 0)
                queue_ms = max(0.0, (time.time() - enqueued) * 1000 - res.inference_ms) if enqueued else 0.0
                resp = to_response(p.req, p.device, res, self.asr, queue_ms, queue_ms + res.inference_ms)
            except Exception as exc:
                self._failed(p, exc)
                continue
            self._finish(p, resp.SerializeToString(), None)
            self.metrics.jobs.labels(outcome="done").inc()

    def _failed(self, p: Parsed, exc: Exception) -> None:
        """A delivery of the job failed: leave it pending (delivered again after claim_min_idle_ms), or give up
        on it after max_job_attempts deliveries."""
        error = f"{type(exc).__name__}: {exc}"
        attempts, limit = p.job.deliveries, self.config.max_job_attempts
        self.metrics.jobs.labels(outcome="failed").inc()
        if attempts >= limit:
            self._give_up(p, error, attempts)
            return
        dead_letter.record_error(self.redis, self.config.stream, p.job.entry_id, error, self.config.result_ttl_s)
        log.warning("job %s (segment %s) failed on delivery %d of %d: %s; it will be delivered again",
                    p.job.entry_id, p.req.segment_id, attempts, limit, error)

    def _give_up(self, p: Parsed, error: str, attempts: int) -> None:
        """Dead-letter the job, tell its device (failed result in Redis and on its results topic), acknowledge."""
        cfg = self.config
        payload = dead_letter.dead_letter(
            self.redis, stream=cfg.stream, dead_stream=cfg.dead_letters, entry_id=p.job.entry_id,
            fields=p.job.fields, device=p.device, segment_id=p.req.segment_id, error=error, attempts=attempts,
            ttl_s=cfg.result_ttl_s,
        )
        self.metrics.jobs.labels(outcome="dead_lettered").inc()
        log.error("dead-lettered job %s (segment %s) to %s after %d attempts: %s",
                  p.job.entry_id, p.req.segment_id, cfg.dead_letters, attempts, error)
        published = published_key(p.device, p.req.segment_id)
        if self.publisher is not None and not self.redis.exists(published):
            fleet = p.job.fields.get(b"fleet", cfg.fleet.encode()).decode()
            self.publisher.publish(results_topic(fleet, p.device), payload)
            self.redis.set(published, b"1", ex=cfg.result_ttl_s)
        self._ack(p.job)

    def _finish(self, p: Parsed, data: bytes | None, existing: bytes | None) -> None:
        key = result_key(p.device, p.req.segment_id)
        if data is not None:
            if self.redis.set(key, data, nx=True, ex=self.config.result_ttl_s):
                self.redis.hincrby(STATS_KEY, "jobs_completed", 1)
            else:  # another worker stored it first: publish that one, so every subscriber sees one result
                existing = self.redis.get(key)
        payload = existing if existing is not None else data
        published = published_key(p.device, p.req.segment_id)
        if payload is not None and self.publisher is not None and not self.redis.exists(published):
            fleet = p.job.fields.get(b"fleet", self.config.fleet.encode()).decode()
            self.publisher.publish(
                results_topic(fleet, p.device), to_json(asr_pb2.TranscribeResponse.FromString(payload))
            )
            self.redis.set(published, b"1", ex=self.config.result_ttl_s)
        self._ack(p.job)

    def _ack(self, job: Job) -> None:
        self.redis.xack(self.config.stream, self.config.group, job.entry_id)

    def run(self) -> None:
        """Work until `stop_event` is set (SIGTERM); the current batch always completes first."""
        from redis.exceptions import ConnectionError, ResponseError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        self.ensure_group()
        log.info(
            "worker %s on stream %s, group %s", self.config.consumer, self.config.stream, self.config.group
        )
        down = lost_group = False
        while not self.stop_event.is_set():
            if self.config.heartbeat_file:
                self.config.heartbeat_file.touch()
            try:
                if lost_group:
                    self.ensure_group()
                    lost_group = False
                self.step()
                if down:
                    log.warning("Redis is back")
                    down = False
            except TimeoutError as exc:  # MQTT did not acknowledge: the jobs stay pending and are retried
                log.warning("%s; retrying", exc)
                self.stop_event.wait(self.config.redis_retry_s)
            except (ConnectionError, RedisTimeoutError) as exc:
                self.metrics.redis_error("worker round")
                if not down:
                    log.warning(
                        "Redis unavailable (%s); retrying every %.0f s", exc, self.config.redis_retry_s
                    )
                    down = True
                self.stop_event.wait(self.config.redis_retry_s)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                if down:  # it answered, so it is back: say so before the round that publishes anything
                    log.warning("Redis is back")
                    down = False
                # Redis came back empty (restarted without persistence, or flushed): the group went with it.
                log.warning("consumer group %s is gone (Redis restarted empty?); creating it again",
                            self.config.group)
                lost_group = True
            except Exception:  # a bug or a job no check foresaw: its jobs stay pending and count deliveries
                log.exception("round failed; its jobs will be delivered again (dead-lettered after %d)",
                              self.config.max_job_attempts)
                self.stop_event.wait(self.config.redis_retry_s)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def run_worker(config: CloudConfig) -> None:
    import redis

    if not config.redis_url:
        raise UserError("the worker needs a Redis URL (the job stream lives there): --redis-url-file FILE, "
                        "$CLOUD_REDIS_URL or --redis URL")
    try:
        client = redis.Redis.from_url(config.redis_url, socket_connect_timeout=2.0, socket_timeout=10.0)
    except ValueError as exc:
        raise UserError(f"bad Redis URL {redact_url(config.redis_url)}: {exc}") from None
    asr = AsrModel.from_config(config)
    settings = mqtt_settings(config)
    publisher = MqttPublisher(settings) if settings is not None else None
    metrics = CloudMetrics.create()
    exporter = metrics.serve(config.metrics_listen) if config.metrics_listen else None
    worker = StreamWorker(config, asr, client, publisher, metrics)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stop_event.set())
    try:
        worker.run()
    finally:
        log.info("worker %s stopped", config.consumer)
        if exporter is not None:
            exporter.close()
        if publisher is not None:
            publisher.close()
        client.close()
