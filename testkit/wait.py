"""The one polling wait for tests, benches and the demo: poll a predicate until it holds (a wait, not a timing
assertion). `wait_until` returns the predicate's truthy value or raises TimeoutError naming what it waited
for; `wait_for` is the same wait answering True or False, for callers that assert on the outcome.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(pred: Callable[[], T], timeout: float = 15.0, what: str = "condition", interval: float = 0.02) -> T:
    """Poll `pred()` every `interval` seconds until it is truthy and return that value; TimeoutError after
    `timeout` seconds. Exceptions from `pred` propagate (a predicate may raise to give up early)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def wait_for(pred: Callable[[], object], timeout: float, interval: float = 0.2) -> bool:
    """`wait_until` as a yes/no answer: True once `pred()` is truthy, False after `timeout` seconds."""
    try:
        wait_until(pred, timeout, interval=interval)
    except TimeoutError:
        return False
    return True
