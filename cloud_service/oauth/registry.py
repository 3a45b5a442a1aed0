"""The OAuth2 client registry and token revocation, in the cloud's Redis.

Keys: `oauth:client:ID` (a hash: sha256 of the secret, scopes, created, generation), `oauth:revoked:JTI` (set
until the token would expire anyway) and `oauth:signing-key` (the HS256 key every replica shares, made by the
first server that needs it). A client secret is 32 random bytes, so a plain sha256 is safe to store, as for
device tokens. Writers (`register_client`, `remove_client`, `revoke_client_tokens`) take a synchronous
redis.Redis (fleetctl); the server's checks go through the async `Store` and fail closed when Redis is down.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cloud_service.oauth import tokens

if TYPE_CHECKING:
    import redis

    from cloud_service.jobs.store import Store

SECRET_BYTES = 32
SIGNING_KEY = "oauth:signing-key"
CLIENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def client_key(client_id: str) -> str:
    return f"oauth:client:{client_id}"


def revoked_key(jti: str) -> str:
    return f"oauth:revoked:{jti}"


def check_client_id(client_id: str) -> str:
    if not CLIENT_ID_RE.fullmatch(client_id):
        raise ValueError(f"bad client id {client_id[:64]!r}: 1-64 characters of letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return client_id


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ClientExists(ValueError):
    """The client is registered already and the caller did not ask to rotate its secret."""


class RegistryUnavailable(Exception):
    """Redis cannot be asked; the request is refused (503), never waved through."""


@dataclass(frozen=True)
class Client:
    client_id: str
    scopes: tuple[str, ...]
    secret_sha256: str
    created: int
    generation: int  # tokens carry the generation they were issued in; revoking all of them bumps it


def _client(client_id: str, raw: dict[Any, Any]) -> Client | None:
    if not raw:
        return None
    get = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
           for k, v in raw.items()}
    return Client(client_id, tuple(get.get("scopes", "").split()), get.get("secret_sha256", ""),
                  int(get.get("created", "0")), int(get.get("generation", "0")))


# ---------------------------------------------------------------------------------------------- writers (sync)

def register_client(r: redis.Redis, client_id: str, scopes: tuple[str, ...], rotate: bool = False) -> str:
    """Register (or with `rotate`, re-key) a client and return its secret: the only time anyone sees it.
    Rotating also revokes every token issued to the old secret."""
    check_client_id(client_id)
    scopes = tokens.check_scopes(scopes)
    if not scopes:
        raise ValueError("give at least one scope")
    key = client_key(client_id)
    if r.exists(key) and not rotate:
        raise ClientExists(f"client {client_id!r} is registered already")
    secret = secrets.token_urlsafe(SECRET_BYTES)
    with r.pipeline(transaction=True) as p:
        p.hset(key, mapping={"secret_sha256": hash_secret(secret), "scopes": " ".join(scopes),
                             "created": int(time.time())})
        p.hincrby(key, "generation", 1)  # a rotated secret's old tokens stop working
        p.execute()
    return secret


def remove_client(r: redis.Redis, client_id: str) -> bool:
    """Delete the client: its tokens stop working at once (each use checks the client). False if unknown."""
    return bool(r.delete(client_key(check_client_id(client_id))))


def revoke_client_tokens(r: redis.Redis, client_id: str) -> bool:
    """Revoke every token issued to the client so far, keeping the client. False if unknown."""
    key = client_key(check_client_id(client_id))
    if not r.exists(key):
        return False
    r.hincrby(key, "generation", 1)
    return True


def list_clients(r: redis.Redis) -> list[Client]:
    out = []
    for key in sorted(r.scan_iter(match=client_key("*"), count=500)):
        name = (key.decode() if isinstance(key, bytes) else key).split(":", 2)[2]
        c = _client(name, r.hgetall(key))
        if c is not None:
            out.append(c)
    return out


# ---------------------------------------------------------------------------------------------- server (async)

class OAuthRegistry:
    """What the token endpoint and the bearer check ask Redis, through the server's Store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._key: bytes | None = None

    async def _ask(self, what: str, fn: Any) -> Any:
        try:
            return await self.store.ask(what, fn)
        except LookupError:
            raise RegistryUnavailable("the OAuth registry (Redis) is unavailable; retry later") from None

    async def signing_key(self) -> bytes:
        """The shared HS256 key, made once (SET NX) by whichever replica needs it first; cached after."""
        if self._key is None:
            fresh = secrets.token_bytes(tokens.KEY_BYTES)

            async def get_or_make(r: Any) -> bytes:
                await r.set(SIGNING_KEY, fresh, nx=True)
                return bytes(await r.get(SIGNING_KEY))

            self._key = await self._ask("oauth key", get_or_make)
        return self._key

    async def client(self, client_id: str) -> Client | None:
        try:
            check_client_id(client_id)
        except ValueError:
            return None
        raw = await self._ask("oauth client", lambda r: r.hgetall(client_key(client_id)))
        return _client(client_id, raw)

    async def authenticate_client(self, client_id: str, secret: str) -> Client | None:
        c = await self.client(client_id)
        if c is None or not hmac.compare_digest(c.secret_sha256, hash_secret(secret)):
            return None
        return c

    async def revoke(self, token: tokens.AccessToken, now: float) -> None:
        ttl = max(1, token.expires_at - int(now) + tokens.LEEWAY_S)
        await self._ask("oauth revoke", lambda r: r.set(revoked_key(token.jti), b"1", ex=ttl))

    async def check_live(self, token: tokens.AccessToken) -> None:
        """TokenError when the token was revoked, its client removed, or its client's tokens revoked."""

        async def state(r: Any) -> tuple[Any, Any]:
            async with r.pipeline(transaction=False) as p:
                p.exists(revoked_key(token.jti))
                p.hgetall(client_key(token.client_id))
                revoked, raw = await p.execute()
            return revoked, raw

        revoked, raw = await self._ask("oauth token check", state)
        if revoked:
            raise tokens.TokenError("the token has been revoked")
        c = _client(token.client_id, raw)
        if c is None:
            raise tokens.TokenError(f"the token's client {token.client_id!r} no longer exists")
        if token.generation != c.generation:
            raise tokens.TokenError(f"the tokens of client {token.client_id!r} issued before its last secret "
                                    "rotation or revocation are revoked")
