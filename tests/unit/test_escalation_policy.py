"""Pure policy pieces of the escalation path: budget, language hint, live parameters, pause-split windows."""

from __future__ import annotations

from edge_node.core.escalation_policy import EscalationBudget, EscalationPolicy, language_hint, wants_escalation
from edge_node.core.vad_rules import SpeechSegment
from edge_node.core.windows import Window, plan_windows
from edge_node.daemon.live_params import Tunables, apply_params
from edge_node.engine.config import EdgeConfig
from shared.fleet_schema import ConfigParams
from shared.whisper_rules import DETECT


def test_budget_caps_the_share_of_escalated_seconds() -> None:
    budget = EscalationBudget(EscalationPolicy(budget_fraction=0.25, budget_window_s=100, budget_min_basis_s=0))
    for t in range(10):
        budget.observe(float(t), 4.0)  # 40 s seen
    assert budget.try_spend(10.0, 6.0)  # 6 <= 10
    assert budget.try_spend(10.0, 4.0)  # 10 <= 10
    assert not budget.try_spend(10.0, 1.0)  # over a quarter
    assert budget.escalated_fraction == 0.25
    budget.observe(200.0, 4.0)  # the window rolled on: old escalations expired
    assert budget.try_spend(200.0, 1.0)


def test_budget_min_basis_and_per_minute_cap() -> None:
    budget = EscalationBudget(EscalationPolicy(budget_fraction=0.5, budget_min_basis_s=60, max_per_min=2))
    budget.observe(0.0, 2.0)
    assert budget.try_spend(0.0, 2.0) and budget.try_spend(1.0, 2.0)  # basis 60 s, not 2 s
    assert not budget.try_spend(2.0, 2.0)  # third in the same minute
    assert budget.try_spend(70.0, 2.0)


def test_language_hint_and_logprob_rule() -> None:
    policy = EscalationPolicy(device_language="en", detect_language_below=0.3, escalate_logprob_below=-1.0)
    assert language_hint(0.1, policy) == DETECT
    assert language_hint(0.5, policy) == "en"
    assert wants_escalation(False, -1.5, policy) and not wants_escalation(False, -0.5, policy)
    assert wants_escalation(True, -0.1, EscalationPolicy())


def test_live_params_map_onto_engine_and_policy() -> None:
    base = Tunables(EdgeConfig(), EscalationPolicy())
    params = ConfigParams.model_validate({
        "thresholds": {"confidence": 0.8, "no_speech": 0.4, "avg_logprob": -0.9},
        "beam_size": 3, "vad": {"threshold": 0.6, "min_silence_ms": 500, "max_segment_s": 12},
        "prompt_words": ["Asterisk", "voicemail"], "escalation_budget_fraction": 0.2,
        "escalation_budget_per_min": 30,
    })
    out = apply_params(params, base)
    assert out.edge.confidence.escalate_below == 0.8 and out.edge.confidence.no_speech_ceiling == 0.4
    assert out.edge.beam_size == 3 and out.edge.max_window_s == 12
    assert out.edge.vad.threshold == 0.6 and out.edge.vad.min_silence_s == 0.5
    assert out.edge.initial_prompt == "Asterisk, voicemail"
    assert out.policy.budget_fraction == 0.2 and out.policy.max_per_min == 30
    assert out.policy.escalate_logprob_below == -0.9
    # An empty message returns to the daemon's own defaults.
    assert apply_params(ConfigParams(), base) == base


def test_windows_split_on_long_pauses() -> None:
    speech = [SpeechSegment(0.5, 2.0), SpeechSegment(2.3, 3.0), SpeechSegment(4.5, 6.0)]
    assert plan_windows(speech, 7.0) == [Window(0.0, 7.0)]
    assert plan_windows(speech, 7.0, split_pause_s=0.8) == [Window(0.5, 3.0), Window(4.5, 6.0)]
