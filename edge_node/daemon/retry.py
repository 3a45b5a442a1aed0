"""Retry policy for talking to the cloud: exponential backoff with full jitter, and a circuit breaker.

Pure: time and randomness are passed in, so the policy is testable without sleeping.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class BackoffPolicy:
    base_s: float = 0.5
    cap_s: float = 30.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not self.base_s > 0:
            raise ValueError(f"BackoffPolicy.base_s must be > 0, not {self.base_s}")
        if not self.cap_s >= self.base_s:
            raise ValueError(f"BackoffPolicy.cap_s must be >= base_s ({self.base_s}), not {self.cap_s}")
        if not self.multiplier >= 1:
            raise ValueError(f"BackoffPolicy.multiplier must be >= 1, not {self.multiplier}")

    def ceiling(self, attempt: int) -> float:
        """min(cap, base * mult^attempt): the longest wait after `attempt` failures (also the sender's own pause
        after a round that failed for a reason of its own, where jitter buys nothing)."""
        return min(self.cap_s, self.base_s * self.multiplier ** min(max(0, attempt), 64))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full jitter (AWS architecture blog): uniform in [0, ceiling(attempt)], so many devices coming back
        after an outage do not retry in lock-step."""
        return (rng or random).uniform(0.0, self.ceiling(attempt))


class BreakerState(StrEnum):
    CLOSED = "closed"  # calls flow
    OPEN = "open"  # calls are refused until reset_after_s has passed
    HALF_OPEN = "half_open"  # one trial call decides


@dataclass(frozen=True)
class BreakerPolicy:
    failure_threshold: int = 5  # consecutive failures that open the breaker
    reset_after_s: float = 10.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError(f"BreakerPolicy.failure_threshold must be >= 1, not {self.failure_threshold}")
        if not self.reset_after_s >= 0:
            raise ValueError(f"BreakerPolicy.reset_after_s must be >= 0, not {self.reset_after_s}")


class CircuitBreaker:
    """Stops a device hammering a dead cloud: after N consecutive failures, wait before trying again."""

    def __init__(self, policy: BreakerPolicy = BreakerPolicy(), clock: Callable[[], float] = time.monotonic) -> None:
        self._policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at = 0.0
        self._state = BreakerState.CLOSED
        self._trial_out = False

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._current()

    def _current(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._policy.reset_after_s:
            self._state = BreakerState.HALF_OPEN
            self._trial_out = False
        return self._state

    def allow(self) -> bool:
        """May a call go out now? In half-open, exactly one trial call is let through."""
        with self._lock:
            state = self._current()
            if state is BreakerState.CLOSED:
                return True
            if state is BreakerState.HALF_OPEN and not self._trial_out:
                self._trial_out = True
                return True
            return False

    def retry_in(self) -> float:
        with self._lock:
            if self._current() is not BreakerState.OPEN:
                return 0.0
            return max(0.0, self._policy.reset_after_s - (self._clock() - self._opened_at))

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._state = BreakerState.CLOSED
            self._trial_out = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._current() is BreakerState.HALF_OPEN or self._failures >= self._policy.failure_threshold:
                self._state = BreakerState.OPEN
                self._opened_at = self._clock()
                self._trial_out = False
