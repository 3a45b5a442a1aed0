"""The device registry's one writer (`register_device`) and `fleetctl device add` over it, against an in-memory
stand-in for the two Redis hash commands they use (no server)."""

from __future__ import annotations

import hashlib

import pytest
import redis

from cloud_service.jobs.store import DeviceExists, device_key, register_device
from fleetctl.__main__ import main as fleetctl


class FakeRedis:
    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, str]] = {}
        self.closed = False

    def exists(self, key: str) -> int:
        return int(key in self.hashes)

    def hset(self, key: str, mapping: dict[str, str]) -> int:
        self.hashes.setdefault(key, {}).update(mapping)
        return len(mapping)

    def close(self) -> None:
        self.closed = True


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def test_register_stores_only_the_hash_and_rotates_on_request() -> None:
    r = FakeRedis()
    token = register_device(r, "dev-1")  # type: ignore[arg-type]
    assert token.startswith("dev-1.") and len(token) > len("dev-1.") + 40
    entry = r.hashes[device_key("dev-1")]
    assert entry["token_sha256"] == _sha(token) and token not in entry.values()
    with pytest.raises(DeviceExists):
        register_device(r, "dev-1")  # type: ignore[arg-type]
    assert r.hashes[device_key("dev-1")]["token_sha256"] == _sha(token)  # unchanged
    rotated = register_device(r, "dev-1", rotate=True)  # type: ignore[arg-type]
    assert rotated != token and r.hashes[device_key("dev-1")]["token_sha256"] == _sha(rotated)
    for bad in ("", "has space"):
        with pytest.raises(ValueError):
            register_device(r, bad)  # type: ignore[arg-type]


def test_fleetctl_device_add_prints_the_token_once(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    r = FakeRedis()
    monkeypatch.setattr(redis.Redis, "from_url", lambda *a, **kw: r)
    assert fleetctl(["device", "add", "dev-2", "--redis", "redis://127.0.0.1:1/0"]) == 0
    out = capsys.readouterr().out
    token = out.strip()
    assert out == token + "\n" and r.closed
    assert r.hashes[device_key("dev-2")]["token_sha256"] == _sha(token)

    assert fleetctl(["device", "add", "dev-2", "--redis", "redis://127.0.0.1:1/0"]) == 2
    err = capsys.readouterr()
    assert err.out == "" and "registered already; --rotate replaces its token" in err.err
    assert fleetctl(["device", "add", "dev-2", "--redis", "redis://127.0.0.1:1/0", "--rotate"]) == 0
    assert capsys.readouterr().out.strip() != token
    assert fleetctl(["device", "add", "bad name"]) == 2
    assert "bad device id" in capsys.readouterr().err
