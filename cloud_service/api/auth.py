"""Device authentication: per-device bearer tokens, stored only as sha256 hashes, checked in an interceptor.

A token reads `DEVICE_ID.SECRET`, so the server knows which registry entry to compare against; the secret is
32 random bytes (URL-safe base64), so a plain sha256 of the whole token is safe to store. Tokens are minted and
hashed by the registry's owner, `cloud_service.jobs.store` (`register_device`, `hash_token`).
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from cloud_service.api.limits import MAX_DEVICE_ID_CHARS
from cloud_service.config import DEFAULT_AUTH_CACHE_MAX_AGE_S, DEFAULT_AUTH_CACHE_TTL_S
from cloud_service.jobs.store import Store, hash_token

log = logging.getLogger(__name__)

# Methods anyone may call: health checks (load balancers) and reflection (tooling).
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

# The device the current RPC's token belongs to, set by the interceptor around the handler (each RPC runs in its
# own task, so the value never leaks into another call). Handlers key state by it, not by the request body.
_AUTHENTICATED: contextvars.ContextVar[str | None] = contextvars.ContextVar("authenticated_device", default=None)


def authenticated_device() -> str | None:
    """The device the current RPC was authenticated as; None with auth off (or outside an RPC)."""
    return _AUTHENTICATED.get()


def token_device(token: str) -> str | None:
    device, sep, secret = token.rpartition(".")
    if len(device) > MAX_DEVICE_ID_CHARS:  # no registry entry can match: do not ask Redis about it
        return None
    return device if sep and device and secret else None


class RegistryUnavailableError(Exception):
    """Redis cannot be asked about the token and no recent enough answer is cached: the call is UNAVAILABLE."""


class Authenticator:
    """Checks a bearer token against the registry, with a short cache that also rides out short Redis outages.

    A hash Redis confirmed less than `ttl_s` ago is used without asking again. After that Redis is asked; when it
    cannot answer, the cached hash is still trusted until `max_age_s` after Redis last confirmed it, and then the
    call fails UNAVAILABLE: a token revoked during an outage stops working after `max_age_s`, not after the outage.
    `clock` is monotonic seconds (injectable for tests).
    """

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic,
                 ttl_s: float = DEFAULT_AUTH_CACHE_TTL_S, max_age_s: float = DEFAULT_AUTH_CACHE_MAX_AGE_S) -> None:
        self.store = store
        self._clock = clock
        self.ttl_s = ttl_s
        self.max_age_s = max_age_s
        self._cache: dict[str, tuple[str | None, float]] = {}

    async def device_for(self, authorization: str | None) -> str | None:
        """The authenticated device id, or None. RegistryUnavailableError when it cannot be told."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        token = authorization[len("Bearer ") :].strip()
        device = token_device(token)
        if device is None:
            return None
        digest = hash_token(token)
        stored = await self._stored_hash(device)
        if stored is not None and hmac.compare_digest(stored, digest):
            return device
        # A cached hash may be stale: the token was rotated (`device add --rotate`), or Redis came back empty
        # and the device was registered again. Ask Redis once before refusing.
        fresh = await self._stored_hash(device, use_cache=False)
        return device if fresh is not None and fresh != stored and hmac.compare_digest(fresh, digest) else None

    async def _stored_hash(self, device: str, use_cache: bool = True) -> str | None:
        cached = self._cache.get(device)
        age = self._clock() - cached[1] if cached is not None else None
        if use_cache and cached is not None and age is not None and age < self.ttl_s:
            return cached[0]
        try:
            value = await self.store.token_hash(device)
        except LookupError:
            if cached is not None and age is not None and age < self.max_age_s:
                return cached[0]  # Redis is down: a recent verification still counts
            seen = f"last confirmed {age:.0f} s ago (limit {self.max_age_s:g} s)" if age is not None else "not cached"
            raise RegistryUnavailableError(
                f"the device registry (Redis) is unavailable and this token cannot be verified ({seen}); retry later"
            ) from None
        if value is not None:  # unknown devices are asked about again: they may be registered any moment
            self._cache[device] = (value, self._clock())
        else:
            self._cache.pop(device, None)  # deleted (revoked): no stale hash to fall back on in a later outage
        return value


MAX_CLAIM_SHOWN = 64  # characters of a refused device_id claim echoed back (the longest valid id)


def _metadata(details: grpc.HandlerCallDetails) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in details.invocation_metadata or ():
        out[key] = value if isinstance(value, str) else value.decode(errors="replace")
    return out


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <token>`; a request's device_id must be the token's device."""

    def __init__(self, auth: Authenticator, on_reject: Callable[[], Awaitable[None]] | None = None) -> None:
        self.auth = auth
        self.on_reject = on_reject

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(PUBLIC_PREFIXES):
            return handler
        try:
            device = await self.auth.device_for(_metadata(details).get("authorization"))
        except RegistryUnavailableError as exc:
            return _wrap(handler, None, unavailable=str(exc))
        if device is None and self.on_reject is not None:
            await self.on_reject()
        return _wrap(handler, device)


async def _check(request: Any, context: grpc.aio.ServicerContext, device: str | None,
                 unavailable: str | None = None) -> None:
    if unavailable is not None:  # retryable: the edge keeps the segment and tries again
        await context.abort(grpc.StatusCode.UNAVAILABLE, unavailable)
    if device is None:
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "missing or invalid device token (metadata 'authorization: Bearer <token>')",
        )
    claimed = getattr(request, "device_id", "")
    if claimed and claimed != device:
        await context.abort(
            # Clipped: this runs before the field bounds, and a status message travels in metadata, which
            # gRPC caps at a few KiB (an echoed 10 kB claim turned the refusal into RESOURCE_EXHAUSTED).
            grpc.StatusCode.UNAUTHENTICATED, f"the token does not belong to device {claimed[:MAX_CLAIM_SHOWN]!r}"
        )


def _wrap(handler: Any, device: str | None, unavailable: str | None = None) -> Any:
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await _check(request, context, device, unavailable)
            reset = _AUTHENTICATED.set(device)
            try:
                return await inner_uu(request, context)
            finally:
                _AUTHENTICATED.reset(reset)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await _check(request, context, device, unavailable)
            # FetchModel serves the same artifacts to every device: nothing keyed by the device to set here.
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    return handler  # streaming-request methods: none in this API
