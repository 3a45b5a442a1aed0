"""openai-whisper decoding of a batch of clips: one encoder pass, beam search, per-item temperature fallback.

The class owns the model and must be used from one thread at a time (the batcher's worker thread).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.errors import UserError
from shared.whisper_rules import COMPRESSION_RATIO_THRESHOLD, DETECT, LOGPROB_THRESHOLD, NO_SPEECH_THRESHOLD

if TYPE_CHECKING:
    import torch
    import whisper

    from cloud_service.config import CloudConfig

log = logging.getLogger(__name__)

BEST_OF = 5  # samples per item when decoding at a temperature above zero
SECONDS_PER_TIMESTAMP = 0.02
LENGTH_RATIO = 2.0  # items decoded together differ in duration by at most this factor


@dataclass(frozen=True)
class AsrRequest:
    samples: np.ndarray  # float32 mono 16 kHz, at most 30 s
    language: str | None  # None: detect per item
    prompt: str | None = None
    word_timestamps: bool = False  # align each word (cross-attention DTW): the REST API's words; gRPC never asks
    hotwords: tuple[str, ...] = ()  # contextual biasing phrases (cloud_service/asr/hotwords.py), checked on admission


@dataclass(frozen=True)
class AsrWord:
    word: str
    start: float
    end: float
    probability: float


@dataclass(frozen=True)
class AsrSegment:
    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float


@dataclass(frozen=True)
class AsrResult:
    text: str
    language: str
    segments: tuple[AsrSegment, ...]
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float
    batch_size: int = 1
    inference_ms: float = 0.0
    language_probs: dict[str, float] = field(default_factory=dict, compare=False)
    words: tuple[AsrWord, ...] = ()  # only when the request asked for word_timestamps


def pick_device(requested: str) -> tuple[str, bool]:
    """`auto` picks CUDA with fp16 when present, else CPU with fp32. Returns (device, fp16)."""
    import torch

    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return requested, requested.startswith("cuda")


def length_chunks(idx: list[int], lengths: list[int], ratio: float = LENGTH_RATIO) -> list[list[int]]:
    """Split items into runs of similar duration (shortest first). A batch decodes until its longest item
    ends, so a 25 s prompt among 2 s ones would keep every row stepping for ~90 tokens."""
    chunks: list[list[int]] = []
    for i in sorted(idx, key=lambda i: lengths[i]):
        if chunks and lengths[i] <= ratio * max(lengths[chunks[-1][0]], 1):
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


def needs_fallback(avg_logprob: float, compression_ratio: float, no_speech_prob: float) -> bool:
    """Whisper's own fallback rule (as in whisper.transcribe, shared/whisper_rules.py's thresholds): a result that is
    too repetitive or too unlikely is decoded again at the next temperature, unless the window is judged silent."""
    if no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOGPROB_THRESHOLD:
        return False  # silence: a low log-probability is expected, retrying would only hallucinate
    return compression_ratio > COMPRESSION_RATIO_THRESHOLD or avg_logprob < LOGPROB_THRESHOLD


def split_segments(
    tokens: list[int],
    timestamp_begin: int,
    decode: Any,
    duration: float,
    avg_logprob: float,
    no_speech_prob: float,
) -> tuple[AsrSegment, ...]:
    """Cut a timestamped token sequence (<|t0|> text <|t1|><|t1|> text <|t2|>) into segments."""
    segments: list[AsrSegment] = []
    start: float | None = None
    text_tokens: list[int] = []

    def close(end: float) -> None:
        text = decode(text_tokens).strip()
        if text:
            segments.append(
                AsrSegment(start or 0.0, max(end, start or 0.0), text, avg_logprob, no_speech_prob)
            )

    for tok in tokens:
        if tok >= timestamp_begin:
            t = (tok - timestamp_begin) * SECONDS_PER_TIMESTAMP
            if start is not None and text_tokens:
                close(t)
                start, text_tokens = None, []
            else:
                start = t
        else:
            text_tokens.append(tok)
    if text_tokens:
        close(duration)
    return tuple(segments)


def _fold_beams(original: Any) -> Any:
    """Wrap a cross-attention `qkv_attention` so the n_group beams of a clip share one copy of its keys and
    values: the beams' queries are folded into the query-length axis (cross-attention has no mask), instead
    of repeating 1500 frames of keys/values per beam, which on CPU made large batches memory-bound."""

    def qkv_attention(q: Any, k: Any, v: Any, mask: Any = None) -> Any:
        n_rows, n_clips = q.shape[0], k.shape[0]
        if n_rows == n_clips:
            return original(q, k, v, mask)
        group, n_ctx = n_rows // n_clips, q.shape[1]
        out, qk = original(q.reshape(n_clips, group * n_ctx, q.shape[2]), k, v, None)
        out = out.reshape(n_rows, n_ctx, -1)
        if qk is not None:  # the non-SDPA path also returns the weights
            heads, frames = qk.shape[1], qk.shape[-1]
            qk = (
                qk.view(n_clips, heads, group, n_ctx, frames)
                .transpose(1, 2)
                .reshape(n_rows, heads, n_ctx, frames)
            )
        return out, qk

    return qkv_attention


def _batched_task(model: whisper.Whisper, options: Any, hotwords: tuple[str, ...] = ()) -> Any:
    """A DecodingTask that works for a batch of several clips with beam search or best-of sampling.

    openai-whisper 20250625 repeats the text tokens n_group times per clip but not the audio features, so a
    batch of B > 1 clips with n_group > 1 fails on a shape mismatch (B == 1 works by broadcasting).
    The subclass hands the main loop features repeated to match, and language detection the un-repeated ones.
    It fills the cross-attention key/value cache once per clip (not once per beam) and lets the beams share
    it (`_fold_beams`). `hotwords` adds the hot-word logit filter after whisper's own.
    """
    from whisper.decoding import DecodingTask

    from cloud_service.asr.hotwords import add_hotword_filter

    class BatchedDecodingTask(DecodingTask):
        def _get_audio_features(self, mel: Any) -> Any:
            return super()._get_audio_features(mel).repeat_interleave(self.n_group, dim=0)

        def _detect_language(self, audio_features: Any, tokens: Any) -> Any:
            return super()._detect_language(audio_features[:: self.n_group], tokens)

        def _main_loop(self, audio_features: Any, tokens: Any) -> Any:
            inference = self.inference
            inference.kv_cache, inference.hooks = self.model.install_kv_cache_hooks()
            clips = audio_features[:: self.n_group]
            # The decoder reads its position offset from the cache's first entry: put empty self-attention
            # entries first (the hooks append to them), then the precomputed cross-attention ones.
            empty = audio_features.new_zeros((tokens.shape[0], 0, audio_features.shape[-1]))
            blocks = list(self.model.decoder.blocks)
            for block in blocks:
                inference.kv_cache[block.attn.key] = empty
                inference.kv_cache[block.attn.value] = empty
            for block in blocks:
                attn = block.cross_attn
                inference.kv_cache[attn.key] = attn.key(clips)
                inference.kv_cache[attn.value] = attn.value(clips)
                attn.qkv_attention = _fold_beams(type(attn).qkv_attention.__get__(attn))
            try:
                return super()._main_loop(audio_features, tokens)
            finally:
                for block in blocks:
                    del block.cross_attn.qkv_attention  # back to the class's method

    return add_hotword_filter(BatchedDecodingTask(model, options), hotwords)


class AsrModel:
    """One openai-whisper model on one device, decoding batches."""

    def __init__(
        self,
        model: whisper.Whisper,
        name: str,
        device: str,
        fp16: bool,
        beam_size: int = 5,
        temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
        version: str = "",
    ) -> None:
        self.model = model
        self.name = name
        self.version = version or name
        self.device = device
        self.fp16 = fp16
        self.beam_size = beam_size
        self.temperatures = temperatures

    @classmethod
    def load(
        cls,
        checkpoint: Path,
        device: str = "auto",
        beam_size: int = 5,
        temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
        quantize: str = "none",
    ) -> AsrModel:
        import hashlib

        from cloud_service.asr.checkpoint import checkpoint_name, load_whisper

        dev, fp16 = pick_device(device)
        if quantize == "int8" and dev != "cpu":
            raise UserError(f"--quantize int8 runs on the CPU only (PyTorch has no CUDA int8 kernels); {dev} "
                            "serves fp16: drop --quantize or give --device cpu")
        t0 = time.perf_counter()
        model = load_whisper(checkpoint, device=dev).eval()
        if quantize == "int8":
            from cloud_service.asr.quantize import quantize_int8

            model = quantize_int8(model)
        name = checkpoint_name(checkpoint)
        with checkpoint.open("rb") as f:  # the version names the exact weights: the start of their sha256
            version = hashlib.file_digest(f, "sha256").hexdigest()[:12]
        log.info(
            "loaded %s (%s) on %s%s in %.1f s",
            name,
            version,
            dev,
            " fp16" if fp16 else " int8 dynamic" if quantize == "int8" else "",
            time.perf_counter() - t0,
        )
        suffix = "-int8" if quantize == "int8" else ""  # the version names the numerics served, too
        return cls(model, name, dev, fp16, beam_size, temperatures, version=f"{name}-{version}{suffix}")

    @classmethod
    def from_config(cls, config: CloudConfig) -> AsrModel:
        if config.threads > 0:
            import torch

            # On a shared or small machine one or two threads avoid OpenMP barrier thrash.
            torch.set_num_threads(config.threads)
        return cls.load(config.checkpoint_path(), config.device, config.beam_size, config.temperatures,
                        config.quantize)

    @property
    def multilingual(self) -> bool:
        return bool(self.model.is_multilingual)

    def normalize_language(self, hint: str) -> str | None:
        """The language to decode in (None: detect). Raises ValueError naming a bad hint."""
        from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

        hint = hint.strip().lower()
        if not self.multilingual:
            if hint in ("", DETECT, "en", "english"):
                return "en"
            raise ValueError(f"model {self.name} is English-only; language {hint!r} is not available")
        if hint in ("", DETECT):
            return None
        code: str | None = hint if hint in LANGUAGES else TO_LANGUAGE_CODE.get(hint)
        if code is None:
            raise ValueError(f"unknown language {hint!r}; use an ISO code such as 'en' or 'detect'")
        # LANGUAGES grew with newer checkpoints ("yue" came with large-v3); the tokenizer of an older one raises on
        # the extra codes, which would fail the whole batch the request rides in.
        if code not in tuple(LANGUAGES)[: self.model.num_languages]:
            raise ValueError(f"model {self.name} does not know language {hint!r}")
        return code

    def _mels(self, items: list[AsrRequest]) -> torch.Tensor:
        import torch
        from whisper.audio import log_mel_spectrogram, pad_or_trim

        n_mels = self.model.dims.n_mels
        mels = [log_mel_spectrogram(pad_or_trim(torch.from_numpy(it.samples)), n_mels) for it in items]
        batch = torch.stack(mels).to(self.device)
        return batch.half() if self.fp16 else batch

    def transcribe_batch(self, items: list[AsrRequest]) -> list[AsrResult]:
        """Decode all items: one batched encoder pass, one batched decode per (language, prompt, hot-words)
        group."""
        import torch

        if not items:
            return []
        t0 = time.perf_counter()
        with torch.no_grad():
            features = self.model.encoder(self._mels(items))
        groups: dict[tuple[str | None, str | None, tuple[str, ...]], list[int]] = defaultdict(list)
        for i, it in enumerate(items):
            groups[(it.language, it.prompt or None, it.hotwords)].append(i)
        raw: dict[int, Any] = {}
        for (language, prompt, hotwords), idx in groups.items():
            for chunk in length_chunks(idx, [len(it.samples) for it in items]):
                raw.update(self._decode_with_fallback(features, chunk, language, prompt, hotwords))
        ms = (time.perf_counter() - t0) * 1000.0
        return [self._result(raw[i], items[i], len(items), ms) for i in range(len(items))]

    def _decode_with_fallback(
        self,
        features: torch.Tensor,
        idx: list[int],
        language: str | None,
        prompt: str | None,
        hotwords: tuple[str, ...] = (),
    ) -> dict[int, Any]:
        from whisper.decoding import DecodingOptions

        done: dict[int, Any] = {}
        pending = list(idx)
        for n, t in enumerate(self.temperatures):
            opts = DecodingOptions(
                language=language,
                prompt=prompt,
                temperature=t,
                fp16=self.fp16,
                beam_size=self.beam_size if t == 0 else None,
                best_of=BEST_OF if t > 0 else None,
            )
            results = _batched_task(self.model, opts, hotwords).run(features[pending])
            last = n == len(self.temperatures) - 1
            retry: list[int] = []
            for i, r in zip(pending, results, strict=True):
                if not last and needs_fallback(r.avg_logprob, r.compression_ratio, r.no_speech_prob):
                    retry.append(i)
                done[i] = r  # keep the latest attempt in case every temperature fails
            if retry:
                log.debug("temperature %.1f: %d of %d items fall back", t, len(retry), len(pending))
            pending = retry
            if not pending:
                break
        return done

    def _result(self, r: Any, item: AsrRequest, batch_size: int, ms: float) -> AsrResult:
        from whisper.tokenizer import get_tokenizer

        tok = get_tokenizer(
            self.multilingual, num_languages=self.model.num_languages, language=r.language, task="transcribe"
        )
        duration = len(item.samples) / 16_000
        segs = split_segments(
            list(r.tokens),
            tok.timestamp_begin,
            tok.decode,
            duration,
            float(r.avg_logprob),
            float(r.no_speech_prob),
        )
        return AsrResult(
            text=r.text.strip(),
            language=r.language,
            segments=segs,
            avg_logprob=float(r.avg_logprob),
            no_speech_prob=float(r.no_speech_prob),
            temperature=float(r.temperature),
            compression_ratio=float(r.compression_ratio),
            batch_size=batch_size,
            inference_ms=ms,
            words=self._words(list(r.tokens), item, tok) if item.word_timestamps else (),
        )

    def _words(self, tokens: list[int], item: AsrRequest, tok: Any) -> tuple[AsrWord, ...]:
        """Word timings by openai-whisper's DTW over the alignment heads' cross-attention (one extra decoder
        pass for this item alone, so items that did not ask cost nothing)."""
        import torch
        from whisper.audio import N_FRAMES, log_mel_spectrogram, pad_or_trim
        from whisper.timing import find_alignment

        text_tokens = [t for t in tokens if t < tok.eot]
        if not text_tokens:
            return ()
        mel = log_mel_spectrogram(pad_or_trim(torch.from_numpy(item.samples)), self.model.dims.n_mels)
        mel = mel.to(self.device)
        num_frames = min(N_FRAMES, len(item.samples) // 160)
        with torch.no_grad():
            timings = find_alignment(self.model, tok, text_tokens, mel.half() if self.fp16 else mel, num_frames)
        return tuple(AsrWord(w.word, float(w.start), float(w.end), float(w.probability))
                     for w in timings if w.word.strip())
