"""Operator parameters (MQTT `ConfigParams`) -> the daemon's engine config and escalation policy. Pure.

Unset fields keep the values the daemon started with, so removing an override returns to the local default. It sits
beside the daemon, not in edge_node/core, because it builds the engine's `EdgeConfig` (core imports no engine).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from edge_node.core.escalation_policy import EscalationPolicy
from edge_node.engine.config import EdgeConfig
from shared.fleet_schema import ConfigParams

VAD_HYSTERESIS = 0.15  # speech ends this far below the start threshold (Silero's usual pairing)


@dataclass(frozen=True)
class Tunables:
    edge: EdgeConfig
    policy: EscalationPolicy


def apply_params(params: ConfigParams, base: Tunables) -> Tunables:
    edge, policy = base.edge, base.policy
    conf = edge.confidence
    t = params.thresholds
    if t is not None:
        if t.confidence is not None:
            conf = replace(conf, escalate_below=t.confidence)
        if t.no_speech is not None:
            conf = replace(conf, no_speech_ceiling=t.no_speech)
        if t.compression_ratio is not None:
            conf = replace(conf, compression_ceiling=t.compression_ratio)
        if t.avg_logprob is not None:
            policy = replace(policy, escalate_logprob_below=t.avg_logprob)
    vad = edge.vad
    v = params.vad
    max_window = edge.max_window_s
    if v is not None:
        if v.threshold is not None:
            vad = replace(vad, threshold=v.threshold, neg_threshold=max(0.01, v.threshold - VAD_HYSTERESIS))
        if v.min_speech_ms is not None:
            vad = replace(vad, min_speech_s=v.min_speech_ms / 1000)
        if v.min_silence_ms is not None:
            vad = replace(vad, min_silence_s=v.min_silence_ms / 1000)
        if v.speech_pad_ms is not None:
            vad = replace(vad, pad_s=v.speech_pad_ms / 1000)
        if v.max_segment_s is not None:
            max_window = v.max_segment_s
    beam = edge.beam_size
    if params.beam_size is not None:
        beam = None if params.beam_size <= 1 else params.beam_size
    prompt = edge.initial_prompt
    if params.prompt_words is not None:
        prompt = ", ".join(params.prompt_words) or None
    hotwords = edge.hotwords if params.hotwords is None else params.hotwords
    threads = params.threads if params.threads is not None else edge.threads
    if params.escalation_budget_fraction is not None:
        policy = replace(policy, budget_fraction=params.escalation_budget_fraction)
    if params.escalation_budget_per_min is not None:
        policy = replace(policy, max_per_min=params.escalation_budget_per_min)
    new_edge = replace(edge, confidence=conf, vad=vad, max_window_s=max_window, beam_size=beam,
                       initial_prompt=prompt, threads=threads, hotwords=hotwords)
    return Tunables(new_edge, policy)
