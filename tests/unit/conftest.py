"""Unit tests start no server: any attempt fails the test, so a test that needs one belongs in integration/."""

from __future__ import annotations

import pytest

from testkit import servers


@pytest.fixture(autouse=True)
def _no_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: object) -> None:
        raise AssertionError(f"a unit test started {type(self).__name__}: move it to tests/integration")

    for cls in (servers._Server, *servers._Server.__subclasses__()):
        if "start" in vars(cls):
            monkeypatch.setattr(cls, "start", refuse)
