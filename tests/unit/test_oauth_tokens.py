"""OAuth2 access tokens (cloud_service/oauth/tokens.py): what verifies and why each bad token is refused."""

from __future__ import annotations

import base64
import json

import jwt
import pytest

from cloud_service.oauth import tokens
from cloud_service.oauth.registry import check_client_id

KEY = b"k" * 32
NOW = 1_800_000_000.0


def test_an_issued_token_verifies_with_its_claims() -> None:
    text, issued = tokens.issue(KEY, "ha-1", ("transcribe", "fleet:read"), NOW, 900, generation=3)
    assert tokens.looks_like_jwt(text) and not tokens.looks_like_jwt("dev-1.c2VjcmV0")
    # A device id may start with "eyJ" and hold a dot: its token is still a device token.
    assert not tokens.looks_like_jwt("eyJkitchen.v2.c2VjcmV0")
    got = tokens.verify(KEY, text, NOW + 899)
    assert got == issued and got.scopes == {"transcribe", "fleet:read"} and got.generation == 3
    assert got.expires_at == int(NOW) + 900


@pytest.mark.parametrize(("make", "message"), [
    (lambda: tokens.issue(KEY, "c", ("transcribe",), NOW - 1000, 900)[0], "expired 100 s ago"),
    (lambda: tokens.issue(b"x" * 32, "c", ("transcribe",), NOW, 900)[0], "signature is not valid"),
    (lambda: tokens.issue(KEY, "c", ("transcribe",), NOW + 60, 900)[0], "issued in the future"),
    (lambda: jwt.encode({"sub": "c"}, KEY * 2, algorithm="HS512"), "algorithm 'HS512' is not accepted"),
    (lambda: jwt.encode({"iss": tokens.ISSUER, "aud": "other", "sub": "c", "scope": "", "iat": int(NOW),
                         "exp": int(NOW) + 9, "jti": "j", "gen": 0}, KEY, algorithm="HS256"), "not meant for"),
    (lambda: jwt.encode({"iss": tokens.ISSUER, "aud": tokens.AUDIENCE, "sub": "c", "iat": int(NOW),
                         "exp": int(NOW) + 9, "jti": "j", "gen": 0}, KEY, algorithm="HS256"), "lacks the 'scope'"),
    (lambda: "eyJ.not.ajwt", "not a well-formed JWT"),
    (lambda: "eyJ" + "a" * tokens.MAX_TOKEN_CHARS, "longer than"),
])
def test_bad_tokens_are_refused_naming_the_problem(make: object, message: str) -> None:
    with pytest.raises(tokens.TokenError, match=message):
        tokens.verify(KEY, make(), NOW)  # type: ignore[operator]


def test_alg_none_is_refused_even_with_the_right_claims() -> None:
    good, _ = tokens.issue(KEY, "c", ("fleet:write",), NOW, 900)
    _, payload, _ = good.split(".")
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=").decode()
    with pytest.raises(tokens.TokenError, match="'none' is not accepted"):
        tokens.verify(KEY, f"{header}.{payload}.", NOW)


def test_a_tampered_scope_breaks_the_signature() -> None:
    good, _ = tokens.issue(KEY, "c", ("transcribe",), NOW, 900)
    head, payload, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scope"] = "transcribe fleet:write"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(tokens.TokenError, match="signature"):
        tokens.verify(KEY, f"{head}.{forged}.{sig}", NOW)


def test_scopes_and_client_ids_are_checked() -> None:
    assert tokens.check_scopes("transcribe, fleet:read transcribe") == ("transcribe", "fleet:read")
    with pytest.raises(ValueError, match="unknown scope 'admin'"):
        tokens.check_scopes("transcribe,admin")
    assert check_client_id("home-assistant_1.kitchen") == "home-assistant_1.kitchen"
    for bad in ("", "-x", "a b", "a:b", "x" * 65):
        with pytest.raises(ValueError, match="bad client id"):
            check_client_id(bad)
