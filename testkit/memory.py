"""Memory figures of this process for tests that bound what a hostile input may cost."""

from __future__ import annotations

import threading

import psutil

MB = 1024 * 1024


class PeakRss:
    """The highest RSS of this process while the block runs, minus the RSS on entry (sampled every 2 ms: a
    decode of hundreds of MB takes far longer than that to fill its pages)."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self.baseline = self.peak = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(0.002)

    def __enter__(self) -> PeakRss:
        self.baseline = self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.baseline) / MB
