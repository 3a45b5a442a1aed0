"""openai-whisper decoding of a batch of clips: one encoder pass, beam search, per-item temperature fallback.

The class owns the model and must be used from one thread at a time (the batcher's worker thread).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cloud_service.asr.batch_decoding import batched_task, length_chunks, needs_fallback, split_segments
from cloud_service.asr.packing import SAMPLE_RATE, Span, TimedText, pack, plan_windows, split

# The request/result types live in types.py (no torch); they are re-exported here, where callers look first.
from cloud_service.asr.types import AsrRequest, AsrResult, AsrSegment, AsrWord
from shared.errors import UserError
from shared.whisper_rules import DETECT

if TYPE_CHECKING:
    import torch
    import whisper

    from cloud_service.config import CloudConfig

log = logging.getLogger(__name__)

__all__ = ["AsrModel", "AsrRequest", "AsrResult", "AsrSegment", "AsrWord", "PackStats", "pick_device"]

BEST_OF = 5  # samples per item when decoding at a temperature above zero


@dataclass(frozen=True)
class Window:
    """What one row of the encoder sees: one clip, or several packed (`spans` says where each lies)."""

    idx: list[int]  # the batch items in it
    audio: np.ndarray
    spans: tuple[Span, ...]


@dataclass
class PackStats:
    """Running totals of --pack: windows that held several clips, the clips in them, clips decoded again alone."""

    windows: int = 0
    clips: int = 0
    redone: int = 0

    def count(self, windows: list[Window], redone: int) -> None:
        packed = [w for w in windows if len(w.idx) > 1]
        self.windows += len(packed)
        self.clips += sum(len(w.idx) for w in packed)
        self.redone += redone


def pick_device(requested: str) -> tuple[str, bool]:
    """`auto` picks CUDA with fp16 when present, else CPU with fp32. Returns (device, fp16)."""
    import torch

    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return requested, requested.startswith("cuda")


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
        pack: bool = False,
    ) -> None:
        self.model = model
        self.pack = pack  # lay short clips of one decoding group into shared windows (cloud_service/asr/packing.py)
        self.pack_stats = PackStats()
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
        pack: bool = False,
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
        return cls(model, name, dev, fp16, beam_size, temperatures, version=f"{name}-{version}{suffix}", pack=pack)

    @classmethod
    def from_config(cls, config: CloudConfig) -> AsrModel:
        if config.threads > 0:
            import torch

            # On a shared or small machine one or two threads avoid OpenMP barrier thrash.
            torch.set_num_threads(config.threads)
        return cls.load(config.checkpoint_path(), config.device, config.beam_size, config.temperatures,
                        config.quantize, config.pack)

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

    def _mels(self, audio: list[np.ndarray]) -> torch.Tensor:
        import torch
        from whisper.audio import log_mel_spectrogram, pad_or_trim

        n_mels = self.model.dims.n_mels
        mels = [log_mel_spectrogram(pad_or_trim(torch.from_numpy(x)), n_mels) for x in audio]
        batch = torch.stack(mels).to(self.device)
        return batch.half() if self.fp16 else batch

    def transcribe_batch(self, items: list[AsrRequest]) -> list[AsrResult]:
        """Decode all items: one batched encoder pass over their windows (a clip each, or several short clips
        packed with --pack), one batched decode per (language, prompt, hot-words) group."""
        if not items:
            return []
        t0 = time.perf_counter()
        windows = self._windows(items)
        raw = self._decode_windows(items, windows)
        single: dict[int, Any] = {}
        packed: dict[int, tuple[Any, list[AsrSegment]]] = {}
        redo: list[int] = []
        for k, w in enumerate(windows):
            if len(w.idx) == 1:
                single[w.idx[0]] = raw[k]
                continue
            parts = self._split_window(raw[k], w)
            if parts is None:
                redo += w.idx
            else:
                packed.update({i: (raw[k], segs) for i, segs in zip(w.idx, parts, strict=True)})
        self.pack_stats.count(windows, len(redo))
        if redo:  # the packed split was not clear-cut: these clips again, one per window
            again = [Window([i], items[i].samples, ()) for i in redo]
            single.update({again[k].idx[0]: r for k, r in self._decode_windows(items, again).items()})
        ms = (time.perf_counter() - t0) * 1000.0
        n = len(items)
        return [self._result(single[i], items[i], n, ms) if i in single
                else self._packed_result(*packed[i], n, ms) for i in range(n)]

    def _windows(self, items: list[AsrRequest]) -> list[Window]:
        if not self.pack:
            return [Window([i], it.samples, ()) for i, it in enumerate(items)]
        by_key: dict[tuple[str | None, str | None, tuple[str, ...]], list[int]] = defaultdict(list)
        for i, it in enumerate(items):
            by_key[(it.language, it.prompt or None, it.hotwords)].append(i)
        out: list[Window] = []
        for idx in by_key.values():
            # Detected languages differ per clip and word alignment needs the clip alone: those are not packed.
            ok = [items[i].language is not None and not items[i].word_timestamps for i in idx]
            for plan in plan_windows([len(items[i].samples) / SAMPLE_RATE for i in idx], ok):
                members = [idx[j] for j in plan]
                if len(members) == 1:
                    out.append(Window(members, items[members[0]].samples, ()))
                else:
                    audio, spans = pack([items[i].samples for i in members])
                    out.append(Window(members, audio, spans))
        return out

    def _decode_windows(self, items: list[AsrRequest], windows: list[Window]) -> dict[int, Any]:
        """Each window's decoding result, by its index in `windows`."""
        import torch

        with torch.no_grad():
            features = self.model.encoder(self._mels([w.audio for w in windows]))
        groups: dict[tuple[str | None, str | None, tuple[str, ...]], list[int]] = defaultdict(list)
        for k, w in enumerate(windows):
            it = items[w.idx[0]]  # a window's clips share their decoding group
            groups[(it.language, it.prompt or None, it.hotwords)].append(k)
        raw: dict[int, Any] = {}
        for (language, prompt, hotwords), ks in groups.items():
            for chunk in length_chunks(ks, [len(w.audio) for w in windows]):
                raw.update(self._decode_with_fallback(features, chunk, language, prompt, hotwords))
        return raw

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
            results = batched_task(self.model, opts, hotwords).run(features[pending])
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
        tok = self._tokenizer(r.language)
        duration = len(item.samples) / SAMPLE_RATE
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

    def _split_window(self, r: Any, w: Window) -> list[list[AsrSegment]] | None:
        tok = self._tokenizer(r.language)
        segs = split_segments(list(r.tokens), tok.timestamp_begin, tok.decode, len(w.audio) / SAMPLE_RATE,
                              float(r.avg_logprob), float(r.no_speech_prob))
        parts = split([TimedText(s.start, s.end, s.text) for s in segs], w.spans)
        if parts is None:
            return None
        return [[AsrSegment(t.start, t.end, t.text, float(r.avg_logprob), float(r.no_speech_prob)) for t in p]
                for p in parts]

    def _packed_result(self, r: Any, segs: list[AsrSegment], batch_size: int, ms: float) -> AsrResult:
        """A packed clip's result: its own text and segments; log-probability, no-speech probability and
        temperature are the shared window's (documented approximation), the compression ratio its own text's."""
        from whisper.utils import compression_ratio

        text = " ".join(s.text for s in segs).strip()
        return AsrResult(text=text, language=r.language, segments=tuple(segs), avg_logprob=float(r.avg_logprob),
                         no_speech_prob=float(r.no_speech_prob), temperature=float(r.temperature),
                         compression_ratio=float(compression_ratio(text)) if text else 0.0,
                         batch_size=batch_size, inference_ms=ms)

    def _tokenizer(self, language: str) -> Any:
        from whisper.tokenizer import get_tokenizer

        return get_tokenizer(self.multilingual, num_languages=self.model.num_languages, language=language,
                             task="transcribe")

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
