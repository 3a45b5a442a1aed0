"""Prerequisites that `make setup` provides (apt packages, models, keys, the venv's packages).

Under `make test` a missing one means setup is broken, so it fails the test with a clear line; it never skips.
"""

from __future__ import annotations

import pytest


def require(ok: object, what: str) -> None:
    """Fail (not skip) when `ok` is false: `what` says what is missing."""
    if not ok:
        pytest.fail(f"{what} (`make setup` provides it; missing means setup is broken)", pytrace=False)
