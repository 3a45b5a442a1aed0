"""OAuth2 client credentials on the REST API, end to end: clients registered by the real `fleetctl oauth`
process in a real Redis, tokens from the real server's POST /oauth/token, used by the official `openai` client on
real speech, and every refusal (expired, forged, wrong scope, revoked, removed client) with its status and message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import openai
import pytest
import redis
import requests

from cloud_service.asr.model import AsrModel
from cloud_service.http.serve import bound_port, start_http, stop_http
from cloud_service.oauth import tokens
from cloud_service.oauth.registry import SIGNING_KEY
from testkit.servers import RedisServer
from tests.audio_fixtures import data_prompts
from tests.integration.cloud_fixtures import ServerThread, cloud_config, cloud_redis, register_device  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.redis]
ROOT = Path(__file__).resolve().parents[2]


def fleetctl(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLOUD_REDIS_URL": redis_url}  # the URL from the environment, not argv
    return subprocess.run([sys.executable, "-m", "fleetctl", "oauth", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


class Api:
    def __init__(self, port: int, redis_url: str) -> None:
        self.root = f"http://127.0.0.1:{port}"
        self.redis_url = redis_url

    def add_client(self, name: str, scopes: str) -> tuple[str, str]:
        out = fleetctl(self.redis_url, "add", name, "--scopes", scopes)
        assert out.returncode == 0, out.stderr
        creds = json.loads(out.stdout)
        return creds["client_id"], creds["client_secret"]

    def token(self, cid: str, secret: str, scope: str = "", basic: bool = True) -> requests.Response:
        form = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
        if basic:
            return requests.post(f"{self.root}/oauth/token", data=form, auth=(cid, secret), timeout=30)
        return requests.post(f"{self.root}/oauth/token", data={**form, "client_id": cid, "client_secret": secret},
                             timeout=30)

    def access(self, cid: str, secret: str, scope: str = "") -> str:
        resp = self.token(cid, secret, scope)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["access_token"])

    def get(self, path: str, token: str) -> requests.Response:
        return requests.get(f"{self.root}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30)


@pytest.fixture(scope="module")
def api(cloud_redis: RedisServer, tiny_asr: AsrModel, tiny_checkpoint: Path) -> Iterator[Api]:  # noqa: F811
    config = cloud_config(cloud_redis.url, model=str(tiny_checkpoint), max_audio_s=10.0)
    with ServerThread(config, tiny_asr) as thread:
        handle = thread.run(start_http(config, thread.servicer, "127.0.0.1:0"))
        try:
            yield Api(bound_port(handle[0]), cloud_redis.url)
        finally:
            thread.run(stop_http(*handle))


def speech() -> tuple[bytes, str]:
    prompt = next(p for p in data_prompts("en") if p.id == "cannot-complete-as-dialed")
    return prompt.wav.read_bytes(), prompt.text


def error(resp: requests.Response) -> dict[str, Any]:
    body: dict[str, Any] = resp.json()["error"]
    return body


def test_a_client_gets_a_token_and_transcribes_with_the_openai_client(api: Api) -> None:
    cid, secret = api.add_client("ha-kitchen", "transcribe")
    with redis.Redis.from_url(api.redis_url) as r:  # only the secret's hash is stored
        stored = r.hgetall("oauth:client:ha-kitchen")
        assert secret.encode() not in b"".join(stored.values()) and b"secret_sha256" in stored
    again = fleetctl(api.redis_url, "add", "ha-kitchen", "--scopes", "transcribe")
    assert again.returncode != 0 and "registered already" in again.stderr
    for basic in (True, False):  # client_secret_basic and client_secret_post
        resp = api.token(cid, secret, basic=basic)
        assert resp.status_code == 200 and resp.headers["cache-control"] == "no-store"
        body = resp.json()
        assert body["token_type"] == "Bearer" and body["scope"] == "transcribe" and body["expires_in"] == 900
    data, expected = speech()
    client = openai.OpenAI(base_url=f"{api.root}/v1", api_key=body["access_token"], max_retries=0)
    got = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", data))
    assert "dialed" in got.text.lower() and got.text.strip()[:8].lower() == expected.strip()[:8].lower()


def test_token_endpoint_refusals(api: Api) -> None:
    cid, secret = api.add_client("ops-reader", "fleet:read")
    wrong = api.token(cid, secret + "x")
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    assert api.token("nobody", secret).status_code == 401
    grant = requests.post(f"{api.root}/oauth/token", data={"grant_type": "password"}, auth=(cid, secret), timeout=30)
    assert grant.status_code == 400 and grant.json()["error"] == "unsupported_grant_type"
    more = api.token(cid, secret, scope="fleet:read fleet:write")
    assert more.status_code == 400 and more.json()["error"] == "invalid_scope" and "fleet:write" in more.text
    bogus = api.token(cid, secret, scope="admin")
    assert bogus.status_code == 400 and "unknown scope 'admin'" in bogus.json()["error_description"]
    none = requests.post(f"{api.root}/oauth/token", data={"grant_type": "client_credentials"}, timeout=30)
    assert none.status_code == 401 and "no client credentials" in none.json()["error_description"]


def test_expired_forged_and_wrong_scope_tokens(api: Api) -> None:
    cid, secret = api.add_client("ops-tool", "fleet:read,fleet:write")
    good = api.access(cid, secret)
    with redis.Redis.from_url(api.redis_url) as r:
        key = r.get(SIGNING_KEY)
    assert key is not None
    claims = jwt.decode(good, key, algorithms=["HS256"], audience=tokens.AUDIENCE)
    expired = jwt.encode({**claims, "iat": claims["iat"] - 2000, "exp": claims["exp"] - 2000}, key,
                         algorithm="HS256")
    forged = jwt.encode({**claims, "scope": "transcribe fleet:read fleet:write"}, b"f" * 32, algorithm="HS256")
    cases = [(expired, 401, "expired"), (forged, 401, "signature is not valid"),
             (good[:-4] + "AAAA", 401, "signature")]
    for token, status, message in cases:
        resp = api.get("/v1/fleet/devices", token)
        assert resp.status_code == status and message in error(resp)["message"], resp.text
        assert resp.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    data, _ = speech()
    scope = requests.post(f"{api.root}/v1/audio/transcriptions", files={"file": ("a.wav", data)},
                          headers={"Authorization": f"Bearer {good}"}, timeout=30)
    assert scope.status_code == 403 and error(scope)["code"] == "insufficient_scope"
    assert "lacks the 'transcribe' scope" in error(scope)["message"]
    device_token = register_device(api.redis_url, "oauth-dev")  # device tokens: transcribe only
    fleet = api.get("/v1/fleet/devices", device_token)
    assert fleet.status_code == 403 and "lacks the 'fleet:read' scope" in error(fleet)["message"]


def test_fleet_scopes_register_list_and_remove_devices(api: Api) -> None:
    cid, secret = api.add_client("provisioner", "fleet:read,fleet:write")
    writer, reader = api.access(cid, secret), api.access(cid, secret, scope="fleet:read")
    auth = {"Authorization": f"Bearer {writer}"}
    made = requests.post(f"{api.root}/v1/fleet/devices", json={"device_id": "porch-1"}, headers=auth, timeout=30)
    assert made.status_code == 201, made.text
    device_token = made.json()["token"]
    assert device_token.startswith("porch-1.")
    dup = requests.post(f"{api.root}/v1/fleet/devices", json={"device_id": "porch-1"}, headers=auth, timeout=30)
    assert dup.status_code == 409
    listed = api.get("/v1/fleet/devices", reader)
    assert "porch-1" in [d["id"] for d in listed.json()["data"]]
    assert api.get("/v1/models", device_token).status_code == 200  # the new device's token works
    denied = requests.delete(f"{api.root}/v1/fleet/devices/porch-1",
                             headers={"Authorization": f"Bearer {reader}"}, timeout=30)
    assert denied.status_code == 403 and "fleet:write" in error(denied)["message"]
    gone = requests.delete(f"{api.root}/v1/fleet/devices/porch-1", headers=auth, timeout=30)
    assert gone.status_code == 204
    assert "porch-1" not in [d["id"] for d in api.get("/v1/fleet/devices", reader).json()["data"]]


def test_revoked_tokens_and_removed_clients_are_refused(api: Api) -> None:
    cid, secret = api.add_client("satellite", "transcribe")
    one, two = api.access(cid, secret), api.access(cid, secret)
    revoke = requests.post(f"{api.root}/oauth/revoke", data={"token": one}, auth=(cid, secret), timeout=30)
    assert revoke.status_code == 200
    resp = api.get("/v1/models", one)
    assert resp.status_code == 401 and "has been revoked" in error(resp)["message"]
    assert api.get("/v1/models", two).status_code == 200  # only that token

    out = fleetctl(api.redis_url, "revoke", cid)
    assert out.returncode == 0 and "revoked every token" in out.stdout
    resp = api.get("/v1/models", two)
    assert resp.status_code == 401 and "are revoked" in error(resp)["message"]
    three = api.access(cid, secret)  # the client itself still gets new tokens
    assert api.get("/v1/models", three).status_code == 200

    listed = fleetctl(api.redis_url, "list")
    assert "satellite\ttranscribe" in listed.stdout and secret not in listed.stdout
    assert fleetctl(api.redis_url, "remove", cid).returncode == 0
    resp = api.get("/v1/models", three)
    assert resp.status_code == 401 and "no longer exists" in error(resp)["message"]
    assert api.token(cid, secret).status_code == 401
    missing = fleetctl(api.redis_url, "remove", cid)
    assert missing.returncode == 2 and "no OAuth client 'satellite'" in missing.stderr
