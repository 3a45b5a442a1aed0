"""The device registry's one writer (`register_device`) and `fleetctl device add` over it, on a real Redis."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
import redis

from cloud_service.jobs.store import DeviceExists, device_key, register_device
from fleetctl.__main__ import main as fleetctl
from shared.fsutil import SECRET_MODE, atomic_write
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


def test_device_add_takes_a_password_url_from_a_file_and_writes_the_token_0600(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    password = "redis-Pw-from-a-file"
    server = RedisServer(tmp_path / "redis", password=password)
    server.start()
    try:
        url_file = tmp_path / "redis-url"
        atomic_write(url_file, (server.url + "\n").encode(), mode=SECRET_MODE)
        out = tmp_path / "dev-3.token"
        out.write_text("an old token\n")
        out.chmod(0o644)  # e.g. made by hand earlier: the new token must not inherit the mode
        assert fleetctl(["device", "add", "dev-3", "--redis-url-file", str(url_file), "--out", str(out)]) == 0
        printed = capsys.readouterr()
        token = out.read_text().strip()
        assert stat.S_IMODE(out.stat().st_mode) == 0o600 and token.startswith("dev-3.")
        assert token not in printed.out + printed.err and password not in printed.out + printed.err
        assert _stored(redis.Redis.from_url(server.url), "dev-3")["token_sha256"] == _sha(token)
        # A wrong password is refused by the real server, and the error shows neither password.
        wrong = f"redis://:not-{password}@127.0.0.1:{server.port}/0"
        assert fleetctl(["device", "add", "dev-4", "--redis", wrong]) == 2
        err = capsys.readouterr().err
        assert "cannot reach Redis at redis://***@127.0.0.1" in err and password not in err
    finally:
        server.stop()
