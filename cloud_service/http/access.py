"""Who is calling the REST API and what they may do: a device token (scope `transcribe` only) or an OAuth2
access token (a JWT from /oauth/token, with its scopes). Every route names the scope it needs.

401: no token, or one that is malformed, forged, expired, revoked or unknown; 403: a good token without the
scope. With `--no-auth` every caller is `anonymous` with every scope.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cloud_service.http.errors import ApiError
from cloud_service.oauth import tokens
from cloud_service.oauth.registry import OAuthRegistry, RegistryUnavailable

if TYPE_CHECKING:
    from cloud_service.api.server import EscalationServicer

DEVICE_SCOPES = frozenset({tokens.SCOPE_TRANSCRIBE})


@dataclass(frozen=True)
class Principal:
    name: str  # "device:ID", "client:ID" or "anonymous": also the rate-limit key, namespaced by kind
    scopes: frozenset[str]
    token: tokens.AccessToken | None = None


def bearer(authorization: str | None) -> str:
    if not authorization:
        raise ApiError(401, "no bearer token: send 'Authorization: Bearer <token>'", "missing_token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "the Authorization header must read 'Bearer <token>'", "invalid_token")
    return token.strip()


class Access:
    """Checks bearer tokens for the REST routes; one per app, sharing the servicer's Redis store."""

    def __init__(self, servicer: EscalationServicer, clock: Callable[[], float] = time.time) -> None:
        from cloud_service.api.auth import Authenticator

        cfg = servicer.config
        self.enabled = cfg.auth
        self.clock = clock
        self.oauth = OAuthRegistry(servicer.store)
        # Device tokens (DEVICE.SECRET) work here as on gRPC, checked against the same Redis registry.
        self.devices = Authenticator(servicer.store, time.monotonic, cfg.auth_cache_ttl_s, cfg.auth_cache_max_age_s)

    async def authorize(self, authorization: str | None, scope: str) -> Principal:
        if not self.enabled:
            return Principal("anonymous", frozenset(tokens.SCOPES))
        token = bearer(authorization)
        principal = await (self._jwt(token) if tokens.looks_like_jwt(token) else self._device(token))
        if scope not in principal.scopes:
            have = " ".join(sorted(principal.scopes)) or "none"
            raise ApiError(403, f"this token lacks the {scope!r} scope (it has: {have})", "insufficient_scope")
        return principal

    async def _device(self, token: str) -> Principal:
        from cloud_service.api.auth import RegistryUnavailableError

        try:
            device = await self.devices.device_for(f"Bearer {token}")
        except RegistryUnavailableError:
            raise ApiError(503, "the token registry (Redis) is unavailable; retry later", "unavailable") from None
        if device is None:
            raise ApiError(401, "invalid or revoked token", "invalid_token")
        return Principal(f"device:{device}", DEVICE_SCOPES)

    async def _jwt(self, token: str) -> Principal:
        try:
            claims = tokens.verify(await self.oauth.signing_key(), token, self.clock())
            await self.oauth.check_live(claims)
        except tokens.TokenError as exc:
            raise ApiError(401, str(exc), "invalid_token") from None
        except RegistryUnavailable as exc:
            raise ApiError(503, str(exc), "unavailable") from None
        return Principal(f"client:{claims.client_id}", claims.scopes, claims)
