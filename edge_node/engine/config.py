"""The edge node's one typed configuration object, built in `__main__` / the CLI and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_node.core.confidence import ConfidenceConfig
from edge_node.core.decoding import TEMPERATURES
from edge_node.core.vad_rules import VadOptions
from shared.whisper_rules import COMPRESSION_RATIO_THRESHOLD

DEFAULT_MODEL_DIR = Path("models/tiny.en-int8")


@dataclass(frozen=True)
class AudioContextPolicy:
    """How many mel frames the encoder sees for a window shorter than 30 s.

    Whisper pads every window to 3000 frames (30 s). The encoder accepts fewer (a reduced audio context) and
    costs less than linearly less, but too little trailing silence makes tiny.en loop ("7 7 7 7 ...").
    Measured (bench/edge_accuracy.py, 100 English prompts, greedy, text identical to openai-whisper fp32 /
    WER): 30 s: 93 % / 2.51 %; clip + 10 s, at least 15 s, with the 30 s rescue (this default): 91 % / 2.44 %
    in about half the time; clip + 5 s, at least 10 s: 88 % / 2.59 %; clip + 2 s, at least 4 s, no rescue: 16
    of 60 short prompts looped. So: the window plus `margin_frames`, at least `min_frames`, rounded up to
    `step_frames`; and a window whose reduced-context text looks doubtful (`rescue_*`) is decoded again at 30
    s. `full` turns the reduction off.
    """

    full: bool = False
    margin_frames: int = 1000
    step_frames: int = 100
    min_frames: int = 1500
    rescue_compression_ratio: float = COMPRESSION_RATIO_THRESHOLD  # a repetition loop
    rescue_logprob: float = -0.6  # doubtful on average

    def frames_for(self, n_audio_frames: int, max_frames: int = 3000) -> int:
        if self.full:
            return max_frames
        want = max(self.min_frames, n_audio_frames + self.margin_frames)
        want = -(-want // self.step_frames) * self.step_frames
        return min(max_frames, want + (want % 2))


@dataclass(frozen=True)
class EdgeConfig:
    model_dir: Path = DEFAULT_MODEL_DIR
    threads: int = 0  # onnxruntime intra-op threads; 0 = onnxruntime's choice
    # onnxruntime's CPU arena keeps every chunk it ever grew, and windows of many encoder lengths fragment it:
    # off, peak RSS is the largest single pass's (bench/edge_speed.py).
    memory_arena: bool = False
    beam_size: int | None = None  # None/1: greedy
    temperatures: tuple[float, ...] = TEMPERATURES
    # Whisper retries a doubtful window at higher temperatures. A window that escalates is decoded again by
    # the cloud, so by default the edge does not spend up to five more decodes on it (True: whisper's
    # behaviour).
    fallback_on_escalate: bool = False
    initial_prompt: str | None = None  # hot words / domain vocabulary, fed after <|startofprev|>
    # Phrases for contextual biasing of the edge decoder (docs/hotwords.md); per call, transcribe(hotwords=...)
    # overrides them.
    hotwords: tuple[str, ...] = ()
    timestamps: bool = False  # segment windows further by Whisper's timestamp tokens
    word_timestamps: bool = True
    max_window_s: float = 30.0
    # A pause this long ends a window (None: pack speech into windows up to max_window_s). The daemon splits on
    # pauses so each utterance is judged, and escalated, on its own.
    split_pause_s: float | None = None
    # Windows of one long file decoded together. 1 by default: batch 4 raised peak RSS from ~320 to ~870 MB
    # (bench/edge_speed.py) for little gain, as the decoder step is bound by re-laying out cross K/V.
    batch_size: int = 1
    audio_ctx: AudioContextPolicy = field(default_factory=AudioContextPolicy)
    vad: VadOptions = field(default_factory=VadOptions)
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)
