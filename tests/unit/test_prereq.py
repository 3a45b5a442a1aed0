"""A prerequisite that setup provides fails the test when missing; it never turns into a skip."""

from __future__ import annotations

import pytest

from tests.prereq import require


def test_missing_prerequisite_fails_not_skips() -> None:
    require(True, "present")
    with pytest.raises(pytest.fail.Exception, match=r"mosquitto_passwd is not installed.*setup is broken"):
        require(None, "mosquitto_passwd is not installed")
    with pytest.raises(pytest.fail.Exception):
        require([], "no music files")
