"""Whisper's tokenizer on tiktoken, from the artifact's `tokenizer.tiktoken` (no openai-whisper import).

The special tokens follow openai-whisper's order exactly (end of text, start of transcript, 99 language
tokens, translate, transcribe, start of LM, start of previous, no speech, no timestamps, then 1501 timestamps
at 20 ms), so the ids equal `whisper.tokenizer.get_tokenizer(...)`'s; tests check that against the real
package.
"""

from __future__ import annotations

import base64
import string
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import tiktoken

from shared.errors import UserError

# Language codes in the order Whisper's vocabulary assigns their tokens (the first 99 are used by default).
_CODES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr "
    "bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn "
    "yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su "
    "yue"
)
LANGUAGE_CODES: tuple[str, ...] = tuple(_CODES.split())
N_TIMESTAMPS = 1501  # 0.00 .. 30.00 s in 20 ms steps
TIME_PRECISION = 0.02
# The GPT-2 pre-tokenisation pattern Whisper uses.
_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _special_names(num_languages: int) -> list[str]:
    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{code}|>" for code in LANGUAGE_CODES[:num_languages]],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
        *[f"<|{i * TIME_PRECISION:.2f}|>" for i in range(N_TIMESTAMPS)],
    ]


def load_encoding(path: str | Path, num_languages: int = 99) -> tiktoken.Encoding:
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
        ranks = {base64.b64decode(tok): int(rank) for tok, rank in (ln.split() for ln in lines if ln)}
    except FileNotFoundError:
        raise UserError(f"{path}: missing tokenizer file") from None
    except ValueError as exc:
        raise UserError(f"{path}: not a tiktoken rank file ({exc})") from None
    n_vocab = len(ranks)
    specials = {name: n_vocab + i for i, name in enumerate(_special_names(num_languages))}
    return tiktoken.Encoding(
        name=path.name,
        explicit_n_vocab=n_vocab + len(specials),
        pat_str=_PAT,
        mergeable_ranks=ranks,
        special_tokens=specials,
    )


@dataclass(frozen=True)
class Tokenizer:
    """Token ids and text for one Whisper vocabulary. English-only models use language=None, task=None."""

    encoding: tiktoken.Encoding
    language: str | None = None
    task: str | None = None
    special: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "special", dict(self.encoding._special_tokens))

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text)

    def decode(self, tokens: list[int]) -> str:
        """Text of the tokens, timestamps and other specials dropped."""
        return self.encoding.decode([t for t in tokens if t < self.eot])

    def decode_with_timestamps(self, tokens: list[int]) -> str:
        return self.encoding.decode(tokens)

    @property
    def eot(self) -> int:
        return self.special["<|endoftext|>"]

    @property
    def sot(self) -> int:
        return self.special["<|startoftranscript|>"]

    @property
    def transcribe(self) -> int:
        return self.special["<|transcribe|>"]

    @property
    def translate(self) -> int:
        return self.special["<|translate|>"]

    @property
    def sot_lm(self) -> int:
        return self.special["<|startoflm|>"]

    @property
    def sot_prev(self) -> int:
        return self.special["<|startofprev|>"]

    @property
    def no_speech(self) -> int:
        return self.special["<|nospeech|>"]

    @property
    def no_timestamps(self) -> int:
        return self.special["<|notimestamps|>"]

    @property
    def timestamp_begin(self) -> int:
        return self.special["<|0.00|>"]

    @cached_property
    def all_language_tokens(self) -> tuple[int, ...]:
        return tuple(sorted(v for k, v in self.special.items() if k.strip("<|>") in LANGUAGE_CODES))

    def language_token(self, code: str) -> int:
        try:
            return self.special[f"<|{code}|>"]
        except KeyError:
            raise UserError(f"unknown language code {code!r}") from None

    @cached_property
    def sot_sequence(self) -> tuple[int, ...]:
        seq = [self.sot]
        if self.language is not None:
            seq.append(self.language_token(self.language))
        if self.task is not None:
            seq.append(self.transcribe if self.task == "transcribe" else self.translate)
        return tuple(seq)

    @cached_property
    def sot_sequence_including_notimestamps(self) -> tuple[int, ...]:
        return (*self.sot_sequence, self.no_timestamps)

    @cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Tokens of symbols that are not speech (music notes, brackets...), suppressed like openai-whisper
        does.

        A symbol counts when it is one token alone or after a space; the musical signs always count by their
        first token, since they often take several.
        """
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += [
            "<<",
            ">>",
            "<<<",
            ">>>",
            "--",
            "---",
            "-(",
            "-[",
            "('",
            '("',
            "((",
            "))",
            "(((",
            ")))",
            "[[",
            "]]",
            "{{",
            "}}",
            "♪♪",
            "♪♪♪",
        ]
        music = set("♩♪♫♬♭♮♯")
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + sorted(music):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in music:
                    result.add(tokens[0])
        return tuple(sorted(result))

    def split_to_word_tokens(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """Group tokens into words: a new word at a leading space, a punctuation mark or a special token."""
        pieces, piece_tokens = self._split_on_unicode(tokens)
        words: list[str] = []
        word_tokens: list[list[int]] = []
        for piece, toks in zip(pieces, piece_tokens, strict=True):
            starts_word = toks[0] >= self.eot or piece.startswith(" ") or piece.strip() in string.punctuation
            if starts_word or not words:
                words.append(piece)
                word_tokens.append(list(toks))
            else:
                words[-1] += piece
                word_tokens[-1].extend(toks)
        return words, word_tokens

    def _split_on_unicode(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        # A multi-byte character may span tokens: grow a piece until it decodes without a replacement char
        # (unless the full text really has one at that place).
        full = self.decode_with_timestamps(tokens)
        pieces: list[str] = []
        piece_tokens: list[list[int]] = []
        current: list[int] = []
        offset = 0
        for tok in tokens:
            current.append(tok)
            text = self.decode_with_timestamps(current)
            bad = text.find("\ufffd")
            if bad < 0 or (offset + bad < len(full) and full[offset + bad] == "\ufffd"):
                pieces.append(text)
                piece_tokens.append(current)
                current = []
                offset += len(text)
        return pieces, piece_tokens


def get_tokenizer(path: str | Path, multilingual: bool = False, language: str | None = None) -> Tokenizer:
    """The tokenizer for the artifact's vocabulary file; English-only models take no language/task tokens."""
    enc = load_encoding(path)
    if multilingual:
        return Tokenizer(enc, language=language or "en", task="transcribe")
    return Tokenizer(enc)
