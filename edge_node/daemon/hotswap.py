"""Live parameters and model hot swaps: set on the MQTT agent's threads, taken up by the daemon between segments.

The agent (`ParamsTarget.apply_params`) and the model updater (`ModelTarget`: load_candidate, self_test, swap,
discard_candidate) call this object; they never block on decoding. The daemon calls `take_updates` before each
chunk (everything) and before each segment (thresholds and policy only: the chunk is already decoded).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge_node.daemon.live_params import Tunables, apply_params
from edge_node.engine.config import EdgeConfig
from edge_node.engine.transcriber import EdgeTranscriber
from shared import audio
from shared.fleet_schema import ConfigParams

log = logging.getLogger(__name__)


class HotSwap:
    def __init__(self, base: Tunables, transcriber: EdgeTranscriber) -> None:
        self._base = base  # what the daemon started with: unset parameters fall back to it
        self.tunables = base  # in force now (the daemon's thread only)
        self.transcriber = transcriber  # serving now (the daemon's thread only)
        self._lock = threading.Lock()
        self._pending_params: ConfigParams | None = None
        self._candidate: EdgeTranscriber | None = None
        self._swap_to: EdgeTranscriber | None = None

    # -- the agent's side (never block) --------------------------------------------------------------------------
    def apply_params(self, params: ConfigParams) -> None:
        """Check `params` now, on the agent's thread, so one the engine cannot run (a prompt its tokenizer
        refuses, an impossible setting) raises here and is NACKed, instead of failing later on the daemon's
        thread. A dry run: the settings are built on a copy of the serving transcriber, then dropped."""
        new = apply_params(params, self._base)
        self.transcriber.with_config(new.edge)
        with self._lock:
            self._pending_params = params

    def load_candidate(self, directory: Path) -> None:
        candidate = EdgeTranscriber(replace(self.tunables.edge, model_dir=directory))
        with self._lock:
            self._candidate = candidate

    def self_test(self) -> None:
        """The candidate must decode a clip end to end: 2 s of a tone burst in silence (no crash, sane output)."""
        with self._lock:
            candidate = self._candidate
        if candidate is None:
            raise RuntimeError("no candidate model loaded")
        t = np.arange(2 * audio.SAMPLE_RATE) / audio.SAMPLE_RATE
        clip = np.concatenate([np.zeros(audio.SAMPLE_RATE, np.float32),
                               (0.2 * np.sin(2 * np.pi * 440 * t) * (t < 0.5)).astype(np.float32)])
        result = candidate.transcribe(clip)
        if result.duration <= 0 or any(not (0.0 <= s.confidence <= 1.0) for s in result.segments):
            raise RuntimeError("candidate model produced an invalid result on the self-test clip")

    def swap(self) -> None:
        with self._lock:
            self._swap_to, self._candidate = self._candidate, None

    def discard_candidate(self) -> None:
        with self._lock:
            self._candidate = None

    # -- the daemon's side ---------------------------------------------------------------------------------------
    def take_updates(self, policy_only: bool = False) -> None:
        """Take up pending parameters and a swapped-in model; with `policy_only`, only thresholds and policy (and
        the pending updates stay pending for the next full take)."""
        with self._lock:
            params, swap = self._pending_params, self._swap_to
            if not policy_only:
                self._pending_params, self._swap_to = None, None
        if params is not None:
            try:
                self._apply(params, policy_only)
            except Exception:  # checked in apply_params already; still, the daemon must keep transcribing
                log.exception("could not apply live parameters; the previous ones stay in force")
        if swap is not None and not policy_only:
            self.transcriber = swap.with_config(self.tunables.edge)
            log.info("now serving model %s", swap.config.model_dir)

    def _apply(self, params: ConfigParams, policy_only: bool) -> None:
        new = apply_params(params, self._base)
        if policy_only:
            self.tunables = Tunables(replace_confidence(self.tunables.edge, new.edge), new.policy)
            return
        reload = new.edge.threads != self.tunables.edge.threads
        self.tunables = new
        if reload:
            self.transcriber = EdgeTranscriber(replace(new.edge, model_dir=self.transcriber.config.model_dir))
        else:
            self.transcriber = self.transcriber.with_config(new.edge)
        log.info("applied live parameters: %s", params.model_dump(exclude_none=True))


def replace_confidence(edge: EdgeConfig, new: EdgeConfig) -> EdgeConfig:
    """Only the confidence thresholds of `new`: what can change between two segments of one decoded chunk."""
    return replace(edge, confidence=new.confidence)
