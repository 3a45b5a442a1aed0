"""OAuth2 access tokens: short-lived HS256 JWTs with scopes. Pure: no I/O, the clock is an argument.

A token says who it was issued to (`sub`, the client id), what it may do (`scope`, space-separated), when it was
issued and when it expires (`iat`, `exp`), and its own id (`jti`, for revocation). Only HS256 with the service's
key is accepted: `alg: none`, another algorithm, another issuer or audience, a bad signature and an expired token
are each refused with a `TokenError` whose message names the problem. Revocation (a revoked `jti`, a removed
client, a client whose tokens were revoked after `iat`) needs Redis and lives in `cloud_service.oauth.registry`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import jwt

ISSUER = "whisper-fleet"
AUDIENCE = "whisper-fleet-api"
ALGORITHM = "HS256"
KEY_BYTES = 32  # the signing key: 256 random bits (HS256's own strength)
LEEWAY_S = 5  # clock skew allowed between replicas on `exp`/`iat`
MAX_TOKEN_CHARS = 4096  # a longer bearer token is refused before it is parsed

SCOPE_TRANSCRIBE = "transcribe"
SCOPE_FLEET_READ = "fleet:read"
SCOPE_FLEET_WRITE = "fleet:write"
SCOPES = (SCOPE_TRANSCRIBE, SCOPE_FLEET_READ, SCOPE_FLEET_WRITE)

MAX_TOKEN_TTL_S = 24 * 3600


class TokenError(Exception):
    """The bearer token cannot be used; the message says why and is safe to show the client."""


@dataclass(frozen=True)
class AccessToken:
    client_id: str
    scopes: frozenset[str]
    issued_at: int
    expires_at: int
    jti: str
    generation: int = 0  # the client's token generation when issued; revoking all its tokens bumps it


def check_scopes(scopes: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Known scopes, de-duplicated in the order given; ValueError naming an unknown one."""
    items = scopes.replace(",", " ").split() if isinstance(scopes, str) else list(scopes)
    unknown = [s for s in items if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope {unknown[0][:40]!r}; known scopes: {', '.join(SCOPES)}")
    return tuple(dict.fromkeys(items))


def looks_like_jwt(token: str) -> bool:
    """A JWT has three dot-separated parts, the first a base64url JSON header (`eyJ` is `{"`). A device token
    (`DEVICE.SECRET`, where DEVICE may hold dots and start with anything) is not one unless that part decodes."""
    if not token.startswith("eyJ") or token.count(".") != 2 or len(token) > MAX_TOKEN_CHARS:
        return False
    try:
        jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        return False
    return True


def issue(key: bytes, client_id: str, scopes: tuple[str, ...], now: float, ttl_s: int,
          generation: int = 0) -> tuple[str, AccessToken]:
    iat = int(now)
    tok = AccessToken(client_id, frozenset(scopes), iat, iat + ttl_s, secrets.token_urlsafe(16), generation)
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": client_id, "scope": " ".join(scopes), "iat": tok.issued_at,
              "nbf": tok.issued_at, "exp": tok.expires_at, "jti": tok.jti, "gen": generation}
    return jwt.encode(claims, key, algorithm=ALGORITHM), tok


def verify(key: bytes, token: str, now: float) -> AccessToken:
    """The token's claims when its signature, issuer, audience and times are right; else TokenError."""
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError(f"the token is longer than {MAX_TOKEN_CHARS} characters")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise TokenError("the token is not a well-formed JWT") from None
    if header.get("alg") != ALGORITHM:  # never let the token choose how it is checked
        raise TokenError(f"the token's algorithm {str(header.get('alg'))[:20]!r} is not accepted (only {ALGORITHM})")
    try:
        # pyjwt would check exp/nbf/iat against its own clock: the times are checked below against `now`.
        claims = jwt.decode(token, key, algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER,
                            options={"require": ["exp", "iat", "sub", "jti", "scope", "gen"], "verify_exp": False,
                                     "verify_nbf": False, "verify_iat": False})
    except jwt.InvalidSignatureError:
        raise TokenError("the token's signature is not valid (forged, or signed with another key)") from None
    except jwt.InvalidAudienceError:
        raise TokenError(f"the token is not meant for this service (audience is not {AUDIENCE!r})") from None
    except jwt.InvalidIssuerError:
        raise TokenError(f"the token was not issued by {ISSUER!r}") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(f"the token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidTokenError:
        raise TokenError("the token is not a valid JWT") from None
    return _claims(claims, now)


def _claims(claims: dict[str, object], now: float) -> AccessToken:
    exp, iat, sub, jti, scope, gen = (claims.get(k) for k in ("exp", "iat", "sub", "jti", "scope", "gen"))
    if not (isinstance(exp, int) and isinstance(iat, int) and isinstance(sub, str) and isinstance(jti, str)
            and isinstance(scope, str) and isinstance(gen, int)):
        raise TokenError("the token's claims have the wrong types")
    if now > exp + LEEWAY_S:
        raise TokenError(f"the token expired {int(now - exp)} s ago; ask /oauth/token for a new one")
    if iat > now + LEEWAY_S:
        raise TokenError("the token is issued in the future (check the clocks)")
    return AccessToken(sub, frozenset(scope.split()), iat, exp, jti, gen)

