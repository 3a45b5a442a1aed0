"""The Wyoming engine's late-answer bookkeeping (edge_node/daemon/wyoming_engine.py `_Call`): a call the deadline
gave up on is logged exactly once when it settles, whichever of the two comes first; one answered in time is not
logged as late; its slot is freed either way."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from types import SimpleNamespace

import pytest

from edge_node.daemon.wyoming_engine import _Call


def _answered(text: str) -> Future[object]:
    fut: Future[object] = Future()
    fut.set_result(SimpleNamespace(text=f" {text} "))
    return fut


def _late_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("late escalation")]


@pytest.mark.parametrize("late_first", [True, False])
def test_a_late_answer_is_logged_once(caplog: pytest.LogCaptureFixture, late_first: bool) -> None:
    slots = threading.BoundedSemaphore(1)
    slots.acquire()
    call = _Call("dev-wy1-0", slots)
    with caplog.at_level(logging.WARNING, logger="edge_node.daemon.wyoming_engine"):
        if late_first:
            call.mark_late()
            call.settled(_answered("hola"))
        else:  # it settled between the timeout and the loop marking it late
            call.settled(_answered("hola"))
            call.mark_late()
    [line] = _late_lines(caplog)
    assert line.startswith("late escalation dev-wy1-0: cloud answered after") and line.endswith(": hola")
    assert slots.acquire(blocking=False)  # freed


def test_a_late_failure_is_logged_and_an_answer_in_time_is_not(caplog: pytest.LogCaptureFixture) -> None:
    slots = threading.BoundedSemaphore(2)
    slots.acquire()
    slots.acquire()
    failed: Future[object] = Future()
    failed.set_exception(RuntimeError("UNAVAILABLE: gone"))
    with caplog.at_level(logging.WARNING, logger="edge_node.daemon.wyoming_engine"):
        late = _Call("dev-wy1-1", slots)
        late.mark_late()
        late.settled(failed)
        _Call("dev-wy1-2", slots).settled(_answered("in time"))
    assert [ln.split(" after ")[0] for ln in _late_lines(caplog)] == ["late escalation dev-wy1-1: failed"]
    assert "UNAVAILABLE: gone" in _late_lines(caplog)[0]
    assert slots.acquire(blocking=False) and slots.acquire(blocking=False)
