"""Whisper's own decision thresholds, in one place for the edge and the cloud. Pure: constants only.

The three numbers are openai-whisper's `transcribe()` defaults. Both sides apply them as whisper does (temperature
fallback); the edge's confidence policy also starts from them (`ConfidenceConfig`'s hard rules, and the
reduced-audio-context rescue).
"""

from __future__ import annotations

# A decode is too repetitive (a loop: "7 7 7 7 ...") when its text's gzip compression ratio is above this.
COMPRESSION_RATIO_THRESHOLD = 2.4
# The model was unsure on average when the mean token log-probability is below this.
LOGPROB_THRESHOLD = -1.0
# The window is probably silence when the no-speech probability is above this (and the log-prob is low).
NO_SPEECH_THRESHOLD = 0.6

# The language hint that asks the cloud to identify the language instead of assuming one.
DETECT = "detect"

# Whisper's tokenizer (tiktoken) refuses text that spells one of its special tokens ("<|endoftext|>", "<|en|>",
# "<|0.00|>", ...): a prompt holding one would fail the whole batch it rides in. Anything shaped like one is
# refused where prompts enter (the cloud's admission, a pushed edge config), never at decode time.
SPECIAL_TOKEN_OPEN = "<|"
SPECIAL_TOKEN_CLOSE = "|>"


def check_prompt_text(text: str, what: str = "prompt") -> str:
    """The text itself; ValueError naming the problem when whisper's tokenizer could not encode it as a prompt."""
    start = text.find(SPECIAL_TOKEN_OPEN)
    if start >= 0 and text.find(SPECIAL_TOKEN_CLOSE, start + len(SPECIAL_TOKEN_OPEN)) >= 0:
        raise ValueError(f"{what} must not contain special-token markup ('<|...|>')")
    if "\x00" in text:
        raise ValueError(f"{what} must not contain NUL characters")
    return text
