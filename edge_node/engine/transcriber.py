"""File -> segments: VAD windows of <= 30 s, a reduced audio context per window, batched decoding, confidence.

Adapter around the pure parts (audio, decoding, timing, confidence, windows): it owns the onnxruntime sessions.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge_node.core import confidence as conf
from edge_node.core.decoding import DecodingOptions, DecodingResult, decode_with_fallback, needs_fallback
from edge_node.core.timing import WordTiming, token_time_matrix, word_timings
from edge_node.core.tokenizer import Tokenizer, get_tokenizer
from edge_node.core.windows import Window, plan_windows
from edge_node.engine.config import EdgeConfig
from edge_node.engine.onnx_model import SessionConfig, WhisperOnnx
from edge_node.engine.vad import SileroVad
from shared import audio, audio_files
from shared.hotwords import encode_hotwords

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    min_token_prob: float
    mean_entropy: float
    temperature: float
    confidence: float
    escalate: bool
    words: tuple[WordTiming, ...]
    # The audio the text was decoded from: the VAD window (start/end above are tightened to the words). An
    # escalation sends this span, so speech the edge could not read is not cut off.
    audio_start: float = 0.0
    audio_end: float = 0.0
    # Tokens the segment was judged on (its text and the closing token). A kept segment has at least two: the
    # default is that floor, for segments built by hand.
    n_tokens: int = 2

    def features(self) -> conf.SegmentFeatures:
        """The decoding features the segment was judged on (as rounded here), to judge it again."""
        return conf.SegmentFeatures(self.avg_logprob, self.no_speech_prob, self.compression_ratio,
                                    self.min_token_prob, self.mean_entropy, self.temperature, self.n_tokens)


@dataclass(frozen=True)
class FileResult:
    file: str
    text: str
    language: str
    duration: float
    segments: tuple[Segment, ...]
    wall_s: float


class EdgeTranscriber:
    """Loads the artifact once; transcribes files or sample arrays."""

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        d = config.model_dir
        session = SessionConfig(intra_op_threads=config.threads, enable_cpu_mem_arena=config.memory_arena)
        self.model = WhisperOnnx(d, session)
        self.tokenizer: Tokenizer = get_tokenizer(d / "tokenizer.tiktoken", self.model.info.multilingual)
        self.filters = audio_files.load_mel_filters(d / "mel_filters.npy")
        self.vad = SileroVad(d / "vad.onnx", SessionConfig(intra_op_threads=1))
        self.options = self._decoding_options(config)

    def _decoding_options(self, config: EdgeConfig) -> DecodingOptions:
        text = config.initial_prompt
        prompt = tuple(self.tokenizer.encode(" " + text.strip())) if text else ()
        # Encoded here, so a phrase over the token bound raises when the config is applied (a pushed live
        # parameter is NACKed, see daemon/hotswap.py), not at every transcription.
        return DecodingOptions(
            beam_size=config.beam_size, without_timestamps=not config.timestamps, prompt=prompt,
            hotwords=encode_hotwords(self.tokenizer.encode, config.hotwords),
        )

    def _with_hotwords(self, phrases: tuple[str, ...]) -> DecodingOptions:
        """Per-call phrases replace the configured ones for that call; none: the configured ones."""
        if not phrases:
            return self.options
        return replace(self.options, hotwords=encode_hotwords(self.tokenizer.encode, phrases))

    def with_config(self, config: EdgeConfig) -> EdgeTranscriber:
        """Other decoding settings on the same loaded sessions (model_dir and threads are kept)."""
        other = copy.copy(self)
        other.config = replace(config, model_dir=self.config.model_dir, threads=self.config.threads)
        other.options = self._decoding_options(other.config)
        return other

    def transcribe_file(self, path: str | Path) -> FileResult:
        t0 = time.perf_counter()
        samples = audio_files.load_audio(path)
        result = self.transcribe(samples)
        return replace(result, file=str(path), wall_s=round(time.perf_counter() - t0, 4))

    def transcribe(self, samples: np.ndarray, hotwords: tuple[str, ...] = ()) -> FileResult:
        """Transcribe 16 kHz samples; `hotwords` (else config.hotwords) bias decoding (docs/hotwords.md).
        ValueError naming the problem for phrases over the bounds or with special-token markup."""
        t0 = time.perf_counter()
        options = self._with_hotwords(hotwords)
        duration = samples.size / audio.SAMPLE_RATE
        speech = self.vad.speech_segments(samples, self.config.vad)
        windows = plan_windows(speech, duration, self.config.max_window_s, self.config.split_pause_s)
        segments: list[Segment] = []
        # Windows of one length share an encoder shape: batch them.
        by_frames: dict[int, list[tuple[int, Window, np.ndarray]]] = {}
        full = 2 * self.model.dims.n_audio_ctx
        for i, w in enumerate(windows):
            chunk = samples[int(w.start * audio.SAMPLE_RATE) : int(w.end * audio.SAMPLE_RATE)]
            n = self.config.audio_ctx.frames_for(chunk.size // audio.HOP_LENGTH, full)
            mel = audio.log_mel_spectrogram(chunk, self.filters, padding=audio.N_SAMPLES)[:, :full]
            by_frames.setdefault(n, []).append((i, w, mel))
        done: dict[int, list[Segment]] = {}
        for n, items in by_frames.items():
            for b in range(0, len(items), self.config.batch_size):
                batch = items[b : b + self.config.batch_size]
                done.update(self._decode_batch(batch, n, options))
        for i in range(len(windows)):
            segments.extend(done.get(i, []))
        text = " ".join(s.text for s in segments).strip()
        return FileResult(
            "", text, "en", round(duration, 3), tuple(segments), round(time.perf_counter() - t0, 4)
        )

    def _decode_batch(
        self, batch: list[tuple[int, Window, np.ndarray]], n_frames: int, options: DecodingOptions
    ) -> dict[int, list[Segment]]:
        """Encode and decode windows of one encoder length together; re-do doubtful reduced-context ones at 30
        s."""
        full = 2 * self.model.dims.n_audio_ctx
        # One encoder pass per window (its activations dominate peak memory; batching it saves no compute on a
        # CPU), then one batched decode over all the windows' cross-attention keys/values.
        encoded = [self.model.encode(m[None, :, :n_frames]) for _, _, m in batch]
        cross = (
            np.concatenate([k for k, _ in encoded], axis=1),
            np.concatenate([v for _, v in encoded], axis=1),
        )
        del encoded
        temps = self.config.temperatures
        first = decode_with_fallback(self.model, self.tokenizer, *cross, options, temps[:1])
        items: list[tuple[DecodingResult, tuple[np.ndarray, np.ndarray]]] = [
            (r, (cross[0][:, j : j + 1], cross[1][:, j : j + 1])) for j, r in enumerate(first)
        ]
        policy = self.config.audio_ctx
        for j, (r, _) in enumerate(items):
            if n_frames < full and (
                r.compression_ratio > policy.rescue_compression_ratio or r.avg_logprob < policy.rescue_logprob
            ):
                log.debug(
                    "window %d: reduced context doubtful (%s); decoding at 30 s", batch[j][0], r.text[:40]
                )
                ck, cv = self.model.encode(batch[j][2][None])
                items[j] = (
                    decode_with_fallback(self.model, self.tokenizer, ck, cv, options, temps[:1])[0],
                    (ck, cv),
                )
        if len(temps) > 1:
            for j, (r, (ck, cv)) in enumerate(items):
                if not self._done(r):
                    again = decode_with_fallback(
                        self.model, self.tokenizer, ck, cv, options, temps[1:], self._done
                    )[0]
                    items[j] = (again, (ck, cv))
        out: dict[int, list[Segment]] = {}
        for (i, w, _), (r, (ck, cv)) in zip(batch, items, strict=True):
            n_audio = round((w.end - w.start) * audio.FRAMES_PER_SECOND) // 2
            out[i] = self._segments(r, w, ck, cv, n_audio)
        return out

    def _done(self, r: DecodingResult) -> bool:
        """No more temperature fallback: whisper's rule, or (by default) the window escalates anyway."""
        if not needs_fallback(r):
            return True
        if self.config.fallback_on_escalate:
            return False
        f = conf.features(r.token_logprobs, r.token_entropies, r.no_speech_prob, r.compression_ratio, 0.0)
        return conf.judge(f, self.config.confidence).escalate

    def _segments(
        self, r: DecodingResult, w: Window, cross_k: np.ndarray, cross_v: np.ndarray, n_audio: int
    ) -> list[Segment]:
        tok = self.tokenizer
        text_tokens = [t for t in r.tokens if t < tok.eot]
        f = conf.features(
            r.token_logprobs, r.token_entropies, r.no_speech_prob, r.compression_ratio, r.temperature
        )
        verdict = conf.judge(f, self.config.confidence)
        if verdict.drop or not text_tokens:
            log.debug("window %.2f-%.2f dropped as non-speech: %s", w.start, w.end, f)
            return []
        # Probabilities of the text tokens only (timestamps carry no word).
        probs = [float(np.exp(lp)) for t, lp in zip(r.tokens, r.token_logprobs, strict=False) if t < tok.eot]
        words: list[WordTiming] = []
        if self.config.word_timestamps:
            words = self._words(text_tokens, probs, cross_k, cross_v, n_audio, w.start)
        if self.options.without_timestamps:
            spans = [(w.start, w.end, r.text, list(r.token_logprobs), list(r.token_entropies))]
        else:
            spans = self._timestamp_spans(r, w.start)
        segments = []
        for start, end, text, lps, ents in spans:
            audio_span = (w.start, w.end) if self.options.without_timestamps else (start, end)
            seg_words = tuple(x for x in words if start - 0.5 <= (x.start + x.end) / 2 <= end + 0.5)
            if self.options.without_timestamps and seg_words:
                start, end = seg_words[0].start, max(seg_words[-1].end, seg_words[0].start)
            sf = conf.features(lps, ents, r.no_speech_prob, r.compression_ratio, r.temperature)
            v = conf.judge(sf, self.config.confidence)
            segments.append(
                Segment(
                    start=round(start, 2),
                    end=round(end, 2),
                    text=text.strip(),
                    avg_logprob=round(sf.avg_logprob, 4),
                    no_speech_prob=round(sf.no_speech_prob, 4),
                    compression_ratio=round(sf.compression_ratio, 4),
                    min_token_prob=round(sf.min_token_prob, 4),
                    mean_entropy=round(sf.mean_entropy, 4),
                    temperature=r.temperature,
                    confidence=v.confidence,
                    escalate=v.escalate,
                    words=seg_words,
                    audio_start=round(audio_span[0], 3),
                    audio_end=round(audio_span[1], 3),
                    n_tokens=sf.n_tokens,
                )
            )
        return segments

    def _words(
        self,
        text_tokens: list[int],
        probs: list[float],
        cross_k: np.ndarray,
        cross_v: np.ndarray,
        n_audio: int,
        offset: float,
    ) -> list[WordTiming]:
        tok = self.tokenizer
        seq = [*tok.sot_sequence_including_notimestamps, *text_tokens, tok.eot]
        k, v = self.model.empty_cache(1)
        _, _, _, alignment = self.model.decode(np.array([seq], dtype=np.int64), k, v, cross_k, cross_v)
        rows = alignment[0, :, len(tok.sot_sequence) : -1]  # positions predicting each text token, then eot
        matrix = token_time_matrix(rows, min(n_audio, alignment.shape[-1]))
        return word_timings(tok, text_tokens, matrix, probs, offset)

    def _timestamp_spans(
        self, r: DecodingResult, offset: float
    ) -> list[tuple[float, float, str, list[float], list[float]]]:
        """Split a timestamped decode into (start, end, text, logprobs, entropies) per timestamp pair."""
        tok, ts0 = self.tokenizer, self.tokenizer.timestamp_begin
        spans = []
        start_t: float | None = None
        cur: list[int] = []
        lps: list[float] = []
        ents: list[float] = []
        for t, lp, en in zip(r.tokens, r.token_logprobs, r.token_entropies, strict=False):
            if t >= ts0:
                ts = (t - ts0) * 0.02 + offset
                if start_t is None:
                    start_t = ts
                elif cur:
                    spans.append((start_t, ts, tok.decode(cur), [*lps, lp], [*ents, en]))
                    start_t, cur, lps, ents = None, [], [], []
                else:
                    start_t = ts
                continue
            cur.append(t)
            lps.append(lp)
            ents.append(en)
        if cur:
            spans.append(
                (start_t if start_t is not None else offset, offset + 30.0, tok.decode(cur), lps, ents)
            )
        return spans
