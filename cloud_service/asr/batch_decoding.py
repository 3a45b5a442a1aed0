"""Batch decoding pieces of the cloud model (cloud_service/asr/model.py): openai-whisper's DecodingTask made to
work for several clips at once, the fallback rule, length bucketing and timestamp segmentation. Needs torch and
openai-whisper only inside the functions that use them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cloud_service.asr.types import AsrSegment
from shared.whisper_rules import COMPRESSION_RATIO_THRESHOLD, LOGPROB_THRESHOLD, NO_SPEECH_THRESHOLD

if TYPE_CHECKING:
    import whisper

SECONDS_PER_TIMESTAMP = 0.02
LENGTH_RATIO = 2.0  # items decoded together differ in duration by at most this factor


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


def batched_task(model: whisper.Whisper, options: Any, hotwords: tuple[str, ...] = ()) -> Any:
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
