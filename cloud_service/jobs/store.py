"""Redis state of the cloud service: results by (device, segment_id), the device registry, rate limits, counters, the
job stream. Redis is optional at run time: when it goes away every call degrades (no dedup, cached auth),
the outage is logged once, and calls try Redis again every `retry_s` until it answers.

The device registry has one writer, `register_device` (behind `fleetctl device add`, and used directly by the
harness, benches and the demo): a token reads `DEVICE_ID.SECRET` and Redis keeps only its sha256.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from cloud_service.api.limits import check_device_id
from shared.errors import UserError
from shared.net import redact_url

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

T = TypeVar("T")

SOCKET_TIMEOUT_S = 0.5  # a Redis that does not answer in this time is treated as down
STATS_KEY = "asr:stats"
STREAM_MAXLEN = 100_000  # approximate cap on the job stream


# Results are namespaced by the device the request was authenticated as: a segment id alone is only the device's
# own idempotency key, and another device naming it must neither read nor plant that result.
def result_key(device_id: str, segment_id: str) -> str:
    return f"asr:result:{device_id}:{segment_id}"


def published_key(device_id: str, segment_id: str) -> str:
    return f"asr:published:{device_id}:{segment_id}"


def device_key(device_id: str) -> str:
    return f"asr:device:{device_id}"


def rate_key(device_id: str, window: int) -> str:
    return f"asr:rate:{device_id}:{window}"


# ---------------------------------------------------------------------------------------------- device registry

TOKEN_BYTES = 32  # the secret: 32 random bytes (URL-safe base64), so a plain sha256 of the token is safe to store


class DeviceExists(ValueError):
    """The device is registered already and the caller did not ask to rotate its token."""


def new_token(device_id: str) -> str:
    return f"{check_device_id(device_id)}.{secrets.token_urlsafe(TOKEN_BYTES)}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def register_device(client: redis.Redis, device_id: str, rotate: bool = False) -> str:
    """Register `device_id` in the registry and return its new bearer token: the only time anyone sees it,
    since Redis keeps just the token's sha256 (and when it was made).

    ValueError for a bad id; DeviceExists when the device has a token already and `rotate` is false;
    redis.RedisError when Redis does not answer. `client` is a synchronous redis.Redis.
    """
    token = new_token(device_id)
    key = device_key(device_id)
    if client.exists(key) and not rotate:
        raise DeviceExists(f"device {device_id!r} is registered already")
    client.hset(key, mapping={"token_sha256": hash_token(token), "created": f"{time.time():.0f}"})
    return token


def connect(url: str) -> Any:
    """An asyncio Redis client that fails fast (one quick retry) instead of stalling requests."""
    import redis.asyncio as aioredis
    from redis.backoff import ConstantBackoff
    from redis.retry import Retry

    try:
        return aioredis.Redis.from_url(
            url,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            retry=Retry(ConstantBackoff(0.01), 1),
            health_check_interval=0,
        )
    except ValueError as exc:
        raise UserError(f"bad Redis URL {redact_url(url)}: {exc}") from None


class Store:
    """Async Redis access that never raises for an unavailable Redis; callers get the given default."""

    def __init__(self, url: str | None, result_ttl_s: int, retry_s: float = 2.0,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.url = url
        self._on_error = on_error  # (operation): counts failed Redis calls (metrics)
        self.result_ttl_s = result_ttl_s
        self.retry_s = retry_s
        self._redis: Any = connect(url) if url else None
        self._down_since: float | None = None
        self._next_try = 0.0

    @property
    def available(self) -> bool:
        return self._redis is not None and self._down_since is None

    async def _call(self, what: str, fn: Callable[[Any], Awaitable[T]], default: T) -> T:
        from redis.exceptions import ConnectionError, TimeoutError

        if self._redis is None:
            return default
        now = time.monotonic()
        if self._down_since is not None and now < self._next_try:
            return default
        try:
            value = await fn(self._redis)
        except (ConnectionError, TimeoutError, OSError) as exc:
            if self._on_error is not None:
                self._on_error(what)
            if self._down_since is None:
                self._down_since = now
                log.warning(
                    "Redis unavailable (%s during %s): serving without dedup or rate limits; "
                    "retrying every %.0f s",
                    type(exc).__name__,
                    what,
                    self.retry_s,
                )
            self._next_try = now + self.retry_s
            return default
        if self._down_since is not None:
            log.warning("Redis is back after %.1f s", now - self._down_since)
            self._down_since = None
        return value

    async def ask(self, what: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        """`fn(redis)` with the outage handling above, for answers there is no safe default for (registries):
        LookupError when Redis cannot answer, so the caller refuses rather than guesses."""
        missing = object()
        value: T | object = await self._call(what, fn, missing)
        if value is missing:
            raise LookupError(f"Redis is unavailable ({what})")
        return cast(T, value)  # not `missing`: fn's own answer

    async def get_result(self, device_id: str, segment_id: str) -> bytes | None:
        key = result_key(device_id, segment_id)
        return await self._call("get result", lambda r: r.get(key), None)

    async def put_result(self, device_id: str, segment_id: str, data: bytes) -> bool:
        """Store a result unless one is there already (the first writer wins). True if stored."""
        key = result_key(device_id, segment_id)
        ok = await self._call("put result", lambda r: r.set(key, data, nx=True, ex=self.result_ttl_s), None)
        return bool(ok)

    async def token_hash(self, device_id: str) -> str | None:
        """The stored sha256 of the device's token; raises LookupError when Redis cannot say."""
        value: Any = await self.ask("device lookup", lambda r: r.hget(device_key(device_id), "token_sha256"))
        return value.decode() if isinstance(value, bytes) else value

    async def allow(self, device_id: str, per_minute: int) -> bool:
        """Fixed one-minute window per device. Fails open when Redis is down."""
        if per_minute <= 0:
            return True
        key = rate_key(device_id, int(time.time() // 60))

        async def count(r: Any) -> int:
            async with r.pipeline(transaction=True) as p:
                p.incr(key)
                p.expire(key, 120)
                n, _ = await p.execute()
            return int(n)

        return await self._call("rate limit", count, 0) <= per_minute

    async def incr(self, counter: str, n: int = 1) -> None:
        await self._call("counter", lambda r: r.hincrby(STATS_KEY, counter, n), None)

    async def enqueue(self, stream: str, fields: dict[str, bytes | str]) -> str | None:
        """XADD a job; None when Redis is down (the caller must refuse the job, not lose it)."""
        entry = await self._call(
            "enqueue", lambda r: r.xadd(stream, fields, maxlen=STREAM_MAXLEN, approximate=True), None
        )
        if entry is None:
            return None
        return entry.decode() if isinstance(entry, bytes) else str(entry)

    async def stats(self) -> dict[str, int]:
        raw: dict[bytes, bytes] = await self._call("stats", lambda r: r.hgetall(STATS_KEY), {})
        return {k.decode(): int(v) for k, v in raw.items()}

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
