"""The device registry's one writer (`register_device`) and `fleetctl device add` over it, on a real Redis."""

from __future__ import annotations

import hashlib

import pytest
import redis

from cloud_service.jobs.store import DeviceExists, device_key, register_device
from fleetctl.__main__ import main as fleetctl
from testkit.servers import RedisServer

pytestmark = pytest.mark.redis


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _stored(r: redis.Redis, device: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in r.hgetall(device_key(device)).items()}


def test_register_stores_only_the_hash_and_rotates_on_request(redis_server: RedisServer) -> None:
    r = redis.Redis.from_url(redis_server.url)
    token = register_device(r, "dev-1")
    assert token.startswith("dev-1.") and len(token) > len("dev-1.") + 40
    entry = _stored(r, "dev-1")
    assert entry["token_sha256"] == _sha(token) and token not in entry.values()
    with pytest.raises(DeviceExists):
        register_device(r, "dev-1")
    assert _stored(r, "dev-1")["token_sha256"] == _sha(token)  # unchanged
    rotated = register_device(r, "dev-1", rotate=True)
    assert rotated != token and _stored(r, "dev-1")["token_sha256"] == _sha(rotated)
    for bad in ("", "has space"):
        with pytest.raises(ValueError):
            register_device(r, bad)


def test_fleetctl_device_add_prints_the_token_once(redis_server: RedisServer,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    url = redis_server.url
    assert fleetctl(["device", "add", "dev-2", "--redis", url]) == 0
    out = capsys.readouterr().out
    token = out.strip()
    assert out == token + "\n"
    assert _stored(redis.Redis.from_url(url), "dev-2")["token_sha256"] == _sha(token)

    assert fleetctl(["device", "add", "dev-2", "--redis", url]) == 2
    err = capsys.readouterr()
    assert err.out == "" and "registered already; --rotate replaces its token" in err.err
    assert fleetctl(["device", "add", "dev-2", "--redis", url, "--rotate"]) == 0
    assert capsys.readouterr().out.strip() != token
    assert fleetctl(["device", "add", "bad name"]) == 2
    assert "bad device id" in capsys.readouterr().err
