"""POST /oauth/token (RFC 6749 client credentials) and POST /oauth/revoke (RFC 7009), in OAuth's error shape.

Clients authenticate with HTTP Basic (`client_secret_basic`) or with `client_id`/`client_secret` form fields
(`client_secret_post`). Clients are registered with `fleetctl oauth add NAME --scopes ...`.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

from fastapi import FastAPI, Form, Header, Request
from fastapi.responses import JSONResponse, Response

from cloud_service.oauth import tokens
from cloud_service.oauth.registry import Client, RegistryUnavailable

if TYPE_CHECKING:
    from cloud_service.api.server import EscalationServicer
    from cloud_service.http.access import Access

MAX_FIELD = 256
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    """An RFC 6749 §5.2 error: `{"error": CODE, "error_description": MESSAGE}` with its HTTP status."""

    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(description)
        self.status, self.code, self.description = status, code, description


def _response(exc: OAuthError) -> JSONResponse:
    headers = dict(NO_STORE)
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="whisper-fleet"'
    return JSONResponse({"error": exc.code, "error_description": exc.description}, exc.status, headers=headers)


def client_credentials(authorization: str | None, form_id: str, form_secret: str) -> tuple[str, str]:
    """(client_id, secret) from Basic auth or the form; OAuthError when absent, doubled or malformed."""
    if authorization and authorization.lower().startswith("basic "):
        if form_id or form_secret:
            raise OAuthError(400, "invalid_request", "give the client credentials once: Basic auth or the form")
        try:
            raw = base64.b64decode(authorization[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise OAuthError(401, "invalid_client", "the Basic credentials are not valid base64") from None
        cid, sep, secret = raw.partition(":")
        if not sep:
            raise OAuthError(401, "invalid_client", "the Basic credentials must read CLIENT_ID:SECRET")
        return cid, secret
    if not form_id or not form_secret:
        raise OAuthError(401, "invalid_client", "no client credentials: use HTTP Basic auth or the client_id and "
                         "client_secret fields")
    return form_id, form_secret


def granted_scopes(client: Client, requested: str) -> tuple[str, ...]:
    if not requested.strip():
        return client.scopes  # RFC 6749 §3.3: the default is what the client is registered for
    try:
        wanted = tokens.check_scopes(requested.split(" "))
    except ValueError as exc:
        raise OAuthError(400, "invalid_scope", str(exc)) from None
    extra = [s for s in wanted if s not in client.scopes]
    if extra:
        raise OAuthError(400, "invalid_scope", f"client {client.client_id!r} may not have the scope {extra[0]!r} "
                         f"(registered for: {' '.join(client.scopes)})")
    return wanted


def add_oauth_routes(app: FastAPI, servicer: EscalationServicer, access: Access, ttl_s: int,
                     clock: Callable[[], float] = time.time) -> None:
    registry = access.oauth

    async def oauth_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, OAuthError)
        return _response(exc)

    app.add_exception_handler(OAuthError, oauth_error)

    async def authenticate(authorization: str | None, form_id: str, form_secret: str) -> Client:
        if not access.enabled:
            raise OAuthError(400, "invalid_request", "this server runs with --no-auth: it issues no tokens")
        if max(len(form_id), len(form_secret), len(authorization or "")) > MAX_FIELD:
            raise OAuthError(400, "invalid_request", f"a credential is longer than {MAX_FIELD} characters")
        cid, secret = client_credentials(authorization, form_id, form_secret)
        try:
            if not await servicer.store.allow(f"oauth:{cid[:64]}", servicer.config.rate_limit_per_min):
                raise OAuthError(429, "slow_down", "too many token requests for this client; retry in a minute")
            client = await registry.authenticate_client(cid, secret)
        except RegistryUnavailable as exc:
            raise OAuthError(503, "temporarily_unavailable", str(exc)) from None
        if client is None:
            raise OAuthError(401, "invalid_client", "unknown client or wrong secret")
        return client

    @app.post("/oauth/token")
    async def token(
        grant_type: Annotated[str, Form(max_length=MAX_FIELD)] = "",
        scope: Annotated[str, Form(max_length=MAX_FIELD)] = "",
        client_id: Annotated[str, Form(max_length=MAX_FIELD)] = "",
        client_secret: Annotated[str, Form(max_length=MAX_FIELD)] = "",
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        if grant_type != "client_credentials":
            raise OAuthError(400, "unsupported_grant_type" if grant_type else "invalid_request",
                             "only grant_type=client_credentials is supported")
        client = await authenticate(authorization, client_id, client_secret)
        scopes = granted_scopes(client, scope)
        try:
            key = await registry.signing_key()
        except RegistryUnavailable as exc:
            raise OAuthError(503, "temporarily_unavailable", str(exc)) from None
        jwt, _ = tokens.issue(key, client.client_id, scopes, clock(), ttl_s, client.generation)
        return JSONResponse({"access_token": jwt, "token_type": "Bearer", "expires_in": ttl_s,
                             "scope": " ".join(scopes)}, headers=NO_STORE)

    @app.post("/oauth/revoke")
    async def revoke(
        token: Annotated[str, Form(max_length=tokens.MAX_TOKEN_CHARS)] = "",
        client_id: Annotated[str, Form(max_length=MAX_FIELD)] = "",
        client_secret: Annotated[str, Form(max_length=MAX_FIELD)] = "",
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        client = await authenticate(authorization, client_id, client_secret)
        if not token:
            raise OAuthError(400, "invalid_request", "give the token to revoke in the 'token' field")
        try:
            claims = tokens.verify(await registry.signing_key(), token, clock())
        except tokens.TokenError:
            return Response(status_code=200, headers=NO_STORE)  # RFC 7009 §2.2: an invalid token is no error
        except RegistryUnavailable as exc:
            raise OAuthError(503, "temporarily_unavailable", str(exc)) from None
        if claims.client_id != client.client_id:  # RFC 7009: a client revokes only its own tokens
            raise OAuthError(400, "invalid_request", "the token was issued to another client")
        try:
            await registry.revoke(claims, clock())
        except RegistryUnavailable as exc:
            raise OAuthError(503, "temporarily_unavailable", str(exc)) from None
        return Response(status_code=200, headers=NO_STORE)
