"""VAD speech segments -> decoding windows of at most 30 s, cut only in pauses. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from edge_node.core.vad_rules import SpeechSegment


@dataclass(frozen=True)
class Window:
    start: float
    end: float


def plan_windows(
    speech: list[SpeechSegment], duration: float, max_window_s: float = 30.0, split_pause_s: float | None = None
) -> list[Window]:
    """Pack VAD speech segments into windows of at most `max_window_s`, cut only in pauses (pure).

    A clip that fits in one window is decoded whole (as openai-whisper would) when it has any speech; a speech
    run longer than a window is cut into window-sized pieces. With `split_pause_s`, a pause at least that long
    also ends a window: each utterance is then its own segment, with its own confidence and escalation.
    """
    if not speech:
        return []
    if duration <= max_window_s and split_pause_s is None:
        return [Window(0.0, duration)]
    windows: list[Window] = []
    cur: Window | None = None
    for seg in speech:
        s, e = seg.start, seg.end
        while e - s > max_window_s:  # a very long run: hard cuts
            if cur is not None:
                windows.append(cur)
                cur = None
            windows.append(Window(s, s + max_window_s))
            s += max_window_s
        joins = split_pause_s is None or (cur is not None and s - cur.end < split_pause_s)
        if cur is not None and e - cur.start <= max_window_s and joins:
            cur = Window(cur.start, e)
        else:
            if cur is not None:
                windows.append(cur)
            cur = Window(s, e)
    if cur is not None:
        windows.append(cur)
    return windows
