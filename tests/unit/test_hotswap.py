"""Live parameters and model hot swaps on the real int8 artifact: what the daemon serves, and when it changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge_node.core.escalation_policy import EscalationPolicy
from edge_node.daemon.hotswap import HotSwap
from edge_node.daemon.live_params import Tunables
from edge_node.engine.config import EdgeConfig
from edge_node.engine.transcriber import EdgeTranscriber
from shared.audio_files import load_audio
from shared.fleet_schema import ConfigParams, Thresholds
from tests.audio_fixtures import data_prompts


@pytest.fixture(scope="module")
def serving(edge_artifact: Path) -> EdgeTranscriber:
    return EdgeTranscriber(EdgeConfig(model_dir=edge_artifact, threads=1))


def _swap(serving: EdgeTranscriber) -> HotSwap:
    return HotSwap(Tunables(serving.config, EscalationPolicy()), serving)


def test_a_candidate_serves_only_after_self_test_swap_and_a_full_take(
    serving: EdgeTranscriber, edge_artifact: Path, tmp_path: Path
) -> None:
    v2 = tmp_path / "v2"
    shutil.copytree(edge_artifact, v2)
    hs = _swap(serving)
    with pytest.raises(RuntimeError, match="no candidate model loaded"):
        hs.self_test()
    hs.load_candidate(v2)
    hs.self_test()  # decodes the tone-burst clip end to end
    hs.take_updates()
    assert hs.transcriber is serving  # loaded and tested, not swapped in
    hs.swap()
    hs.take_updates(policy_only=True)  # between two segments of one decoded chunk: the model stays
    assert hs.transcriber is serving
    hs.take_updates()
    assert hs.transcriber.config.model_dir == v2
    prompt = data_prompts("en")[0]
    text = " ".join(s.text for s in hs.transcriber.transcribe(load_audio(prompt.wav)).segments)
    assert "cannot be completed" in text.lower(), text

    hs.load_candidate(edge_artifact)  # a rollout that is then abandoned
    hs.discard_candidate()
    with pytest.raises(RuntimeError, match="no candidate model loaded"):
        hs.self_test()
    hs.swap()  # nothing to swap to
    hs.take_updates()
    assert hs.transcriber.config.model_dir == v2


def test_live_parameters_wait_for_their_point_and_an_unset_one_returns_to_the_start(
    serving: EdgeTranscriber,
) -> None:
    hs = _swap(serving)
    start = hs.tunables
    hs.apply_params(ConfigParams(thresholds=Thresholds(confidence=0.9), beam_size=3))
    hs.take_updates(policy_only=True)  # mid-chunk: only the thresholds change
    assert hs.tunables.edge.confidence.escalate_below == 0.9
    assert hs.tunables.edge.beam_size == start.edge.beam_size and hs.transcriber is serving
    hs.take_updates()  # the next chunk: everything, on the same loaded sessions
    assert hs.tunables.edge.beam_size == 3 and hs.transcriber.config.beam_size == 3
    assert hs.transcriber.model is serving.model

    hs.apply_params(ConfigParams(threads=2))  # a new thread count needs new sessions
    hs.take_updates()
    assert hs.transcriber.config.threads == 2 and hs.transcriber.model is not serving.model
    assert hs.tunables.edge.beam_size == start.edge.beam_size  # beam_size no longer set: back to the start
    assert hs.tunables.edge.confidence == start.edge.confidence
