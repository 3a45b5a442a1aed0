"""The gRPC EscalationService on grpc.aio: Transcribe (batched, deduplicated), Submit (Redis Stream) and
FetchModel.

`create_server(config, address)` builds a server and binds it; `serve(config)` runs it until SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from cloud_service.api import artifacts, limits
from cloud_service.api.auth import Authenticator, AuthInterceptor, authenticated_device
from cloud_service.api.messages import job_fields, to_asr_request, to_response
from cloud_service.api.metrics import CloudMetrics, MetricsInterceptor
from cloud_service.asr.audio_codec import AudioError
from cloud_service.asr.batching import Batcher, DeadlineExpiredError, QueueFullError
from cloud_service.asr.model import AsrModel, AsrRequest, AsrResult
from cloud_service.config import CloudConfig, check_listen
from cloud_service.jobs.store import Store
from proto.asr.v1 import asr_pb2, asr_pb2_grpc
from shared.errors import UserError
from shared.fsutil import warn_if_exposed
from shared.metrics_http import Exporter

log = logging.getLogger(__name__)

SERVICE_NAME = asr_pb2.DESCRIPTOR.services_by_name["EscalationService"].full_name
GIL_SWITCH_INTERVAL_S = 0.0005
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # 30 s of 48 kHz PCM16 is 2.9 MB; leave room, refuse the absurd

# (device, segment_id): a segment id is only unique within the device that made it.
ResultKey = tuple[str, str]


class EscalationServicer(asr_pb2_grpc.EscalationServiceServicer):
    def __init__(self, config: CloudConfig, asr: AsrModel, store: Store, metrics: CloudMetrics | None = None) -> None:
        self.config = config
        self.asr = asr
        self.store = store
        self.metrics = metrics or CloudMetrics.create()
        self.exporter: Exporter | None = None  # /metrics, when --metrics-listen is given
        self.batcher: Batcher[AsrRequest, AsrResult] = Batcher(
            asr.transcribe_batch, config.max_batch, config.max_wait_ms, config.queue_size, self._dropped,
            on_batch=self.metrics.batch_done,
        )
        self.metrics.watch_queue(lambda: self.batcher.depth)
        self.metrics.set_model(asr.name, asr.version)
        self._inflight: dict[ResultKey, asyncio.Future[asr_pb2.TranscribeResponse]] = {}
        # Admission slots for audio decoding: a decode holds one from start to end, in a pool of as many threads,
        # so at most max_decodes clips are ever being decoded (each bounded by max_audio_s); none free is
        # RESOURCE_EXHAUSTED, never a wait.
        self.decode_slots = asyncio.Semaphore(config.max_decodes)
        self._decode_pool = ThreadPoolExecutor(max_workers=config.max_decodes, thread_name_prefix="audio-decode")
        self._background: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Any) -> None:
        # Bookkeeping (counters) never delays a reply.
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _dropped(self, n: int) -> None:
        self._spawn(self.store.incr("deadline_dropped", n))

    async def _admit(self, request: asr_pb2.TranscribeRequest, context: grpc.aio.ServicerContext) -> str:
        """Check lengths, ownership of the segment id and the rate, in that order (nothing touches Redis before
        the fields are bounded). Returns the device the request is for: the namespace of its result."""
        device = authenticated_device() if self.config.auth else request.device_id
        if device is None:  # the interceptor refuses such calls first; never fall back to the body's claim
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no authenticated device for this call")
            raise AssertionError("unreachable: abort raises")
        try:
            limits.check_transcribe_request(request)
            # With --no-auth nobody vouches for the device: the body's claim is all there is, checked the same.
            limits.check_device_id(device)
            limits.check_segment_owner(request.segment_id, device)
        except ValueError as exc:
            self._spawn(self.store.incr("invalid_argument"))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # unreachable: abort raises
        if not await self.store.allow(device, self.config.rate_limit_per_min):
            self._spawn(self.store.incr("rate_limited"))
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit of {self.config.rate_limit_per_min} requests/min exceeded",
            )
        return device

    async def _decode(
        self, request: asr_pb2.TranscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsrRequest:
        if self.decode_slots.locked():
            self._spawn(self.store.incr("queue_full"))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"server busy: {self.config.max_decodes} audio decodes already running; retry later")
        try:
            async with self.decode_slots:  # free (checked above): taken without waiting
                if request.audio.encoding == asr_pb2.Audio.PCM16:
                    return to_asr_request(request, self.asr, self.config.max_audio_s)
                # Compressed audio (and ffmpeg for Opus) off the event loop, in the bounded pool.
                return await asyncio.get_running_loop().run_in_executor(
                    self._decode_pool, to_asr_request, request, self.asr, self.config.max_audio_s
                )
        except (AudioError, ValueError) as exc:
            self._spawn(self.store.incr("invalid_argument"))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # unreachable: abort raises

    async def _abort_failed(self, exc: Exception, context: grpc.aio.ServicerContext) -> None:
        """The status for a request whose decode failed. Each is retryable at the edge; a model failure is
        INTERNAL, not the UNKNOWN an escaped exception becomes, which the edge treats as final and drops."""
        if isinstance(exc, QueueFullError):
            self._spawn(self.store.incr("queue_full"))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        if isinstance(exc, DeadlineExpiredError):
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        self._spawn(self.store.incr("internal_error"))
        # The exception's text stays in the server's log: it can name paths and internals.
        await context.abort(grpc.StatusCode.INTERNAL, f"decoding failed on the server ({type(exc).__name__}); "
                            "it is logged there; retry later")

    async def Transcribe(
        self, request: asr_pb2.TranscribeRequest, context: grpc.aio.ServicerContext
    ) -> asr_pb2.TranscribeResponse:
        started = time.perf_counter()
        device = await self._admit(request, context)
        self.metrics.escalation(device)
        key = (device, request.segment_id)
        stored = await self.store.get_result(*key)
        if stored is not None:
            self._spawn(self.store.incr("cached"))
            resp = asr_pb2.TranscribeResponse.FromString(stored)
            resp.cached = True
            return resp
        running = self._inflight.get(key)
        if running is not None:  # the same segment is being decoded for another call right now
            resp = asr_pb2.TranscribeResponse()
            try:
                resp.CopyFrom(await asyncio.shield(running))
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:
                await self._abort_failed(exc, context)
            resp.cached = True
            return resp
        asr_req = await self._decode(request, context)
        done: asyncio.Future[asr_pb2.TranscribeResponse] = asyncio.get_running_loop().create_future()
        self._inflight[key] = done
        try:
            result, stats = await self.batcher.submit(asr_req, context.time_remaining())
            resp = to_response(
                request, device, result, self.asr, stats.queue_ms, (time.perf_counter() - started) * 1000
            )
            done.set_result(resp)
            self.metrics.request_seconds.observe(time.perf_counter() - started)
        except BaseException as exc:
            del self._inflight[key]
            if isinstance(exc, Exception):
                done.set_exception(exc)
                done.exception()  # mark retrieved: waiters re-raise it, nobody else needs to
            else:
                done.cancel()
            if isinstance(exc, Exception) and not isinstance(exc, grpc.aio.AbortError):
                await self._abort_failed(exc, context)
            raise
        # Store after answering: until the write lands, a retry still finds the result in _inflight.
        self._spawn(self._store_result(key, resp))
        return resp

    async def _store_result(self, key: ResultKey, resp: asr_pb2.TranscribeResponse) -> None:
        try:
            await self.store.put_result(*key, resp.SerializeToString())
            await self.store.incr("computed")
        finally:
            self._inflight.pop(key, None)

    async def Submit(
        self, request: asr_pb2.TranscribeRequest, context: grpc.aio.ServicerContext
    ) -> asr_pb2.SubmitResponse:
        device = await self._admit(request, context)
        await self._decode(request, context)  # refuse bad audio now, not in a worker later
        entry = await self.store.enqueue(
            self.config.stream, job_fields(request, self.config.fleet, time.time(), device=device)
        )
        if entry is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "job queue (Redis) unavailable; retry later")
        self._spawn(self.store.incr("submitted"))
        return asr_pb2.SubmitResponse(segment_id=request.segment_id, stream_id=entry)

    async def FetchModel(
        self, request: asr_pb2.ModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[asr_pb2.ModelChunk]:
        try:
            limits.check_model_request(request)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        try:
            art = artifacts.resolve(self.config.artifacts_dir, request.name, request.version, request.file)
        except artifacts.ArtifactNotFoundError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            return
        if request.offset > art.size:
            await context.abort(
                grpc.StatusCode.OUT_OF_RANGE,
                f"offset {request.offset} is past the end of {art.name} ({art.size} bytes)",
            )
        for offset, data in artifacts.chunks(art, request.offset):
            yield asr_pb2.ModelChunk(
                file=art.name, offset=offset, data=data, total_size=art.size, sha256=art.sha256
            )

    async def aclose(self) -> None:
        if self.exporter is not None:
            self.exporter.close()
        await self.batcher.aclose()
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        await self.store.aclose()


_SERVICERS: weakref.WeakKeyDictionary[grpc.aio.Server, EscalationServicer] = weakref.WeakKeyDictionary()


def _credentials(config: CloudConfig) -> grpc.ServerCredentials | None:
    if config.tls is None:
        return None
    warn_if_exposed(config.tls.key_file, "TLS server key")
    try:
        key, cert = config.tls.key_file.read_bytes(), config.tls.cert_file.read_bytes()
        ca = config.tls.client_ca_file.read_bytes() if config.tls.client_ca_file else None
    except OSError as exc:
        raise UserError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def create_server(
    config: CloudConfig, address: str, asr: AsrModel | None = None, clock: Callable[[], float] = time.monotonic
) -> tuple[grpc.aio.Server, int]:
    """Build and bind the server (call inside the event loop that will run it). Returns (server, port)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1.health import aio as health_aio
    from grpc_reflection.v1alpha import reflection

    check_listen(config, address)  # before the model loads: a refused address fails at once
    if config.http_listen:  # the REST address too (cloud_service/http/serve.py warns when it binds)
        from cloud_service.http.serve import check_http_listen

        check_http_listen(config, config.http_listen, warn=False)
    if config.auth and not config.redis_url:
        raise UserError("device auth needs the registry in Redis: give --redis-url-file FILE, $CLOUD_REDIS_URL or "
                        "--redis URL (or --no-auth for a lab)")
    if asr is None:
        asr = AsrModel.from_config(config)
    metrics = CloudMetrics.create()  # this server's own registry
    store = Store(config.redis_url, config.result_ttl_s, config.redis_retry_s, on_error=metrics.redis_error)
    interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(metrics)]  # first: sees auth refusals
    if config.auth:
        interceptors.append(
            AuthInterceptor(Authenticator(store, clock, config.auth_cache_ttl_s, config.auth_cache_max_age_s),
                            on_reject=lambda: store.incr("unauthenticated"))
        )
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    servicer = EscalationServicer(config, asr, store, metrics)
    asr_pb2_grpc.add_EscalationServiceServicer_to_server(servicer, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    creds = _credentials(config)
    port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    if port == 0:
        raise UserError(f"cannot listen on {address}")
    if config.metrics_listen:
        servicer.exporter = metrics.serve(config.metrics_listen)
        log.info("metrics on http://%s/metrics", config.metrics_listen)
    _SERVICERS[server] = servicer
    return server, port


async def stop_server(server: grpc.aio.Server, grace_s: float) -> None:
    """Stop accepting, let in-flight RPCs finish for `grace_s`, then release the model thread and Redis."""
    await server.stop(grace_s)
    servicer = _SERVICERS.pop(server, None)
    if servicer is not None:
        await servicer.aclose()


async def _serve(config: CloudConfig, address: str) -> None:
    # The model thread holds the GIL between torch ops; a short switch interval lets the event loop answer
    # finished requests within a millisecond instead of the default 5 ms.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    server, port = create_server(config, address)
    await server.start()
    http = None
    if config.http_listen:  # the REST API, on this loop, over the same servicer (one Batcher, one model)
        from cloud_service.http.serve import start_http, stop_http

        http = await start_http(config, _SERVICERS[server], config.http_listen)
        log.info("REST API on %s://%s/v1", "https" if config.tls else "http", config.http_listen)
    log.info(
        "listening on %s (port %d), model %s, max_batch %d, max_wait %.0f ms",
        address,
        port,
        config.model,
        config.max_batch,
        config.max_wait_ms,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down (grace %.0f s)", config.grace_s)
    if http is not None:
        await stop_http(*http)
    await stop_server(server, config.grace_s)


def serve(config: CloudConfig, address: str) -> None:
    asyncio.run(_serve(config, address))
