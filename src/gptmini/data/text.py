"""Checking text from users (prompts, text to evaluate) before it reaches the model.

Line breaks are normalised to ``\\n``; other control characters (``\\t`` aside) are
refused, and so are characters a char-level vocabulary does not hold. Every refusal is an
`InputError` whose message names the offending characters, e.g.
``characters outside the model's vocabulary: 'é' (U+00E9), '😀' (U+1F600)``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from gptmini.data.tokenizers import CharTokenizer, Tokenizer

ALLOWED_CONTROLS = frozenset("\n\t")
_SHOWN = 10  # at most this many offending characters are named


class InputError(ValueError):
    """User input the model cannot take, with a message fit to show the user."""


def describe_chars(chars: Iterable[str]) -> str:
    """'é' (U+00E9), '\\x1b' (U+001B), ... for the first few distinct characters."""
    distinct = sorted(set(chars))
    named = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in distinct[:_SHOWN])
    more = f" and {len(distinct) - _SHOWN} more" if len(distinct) > _SHOWN else ""
    return named + more


def normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def check_text(text: str, tokenizer: Tokenizer, what: str = "the text") -> str:
    """`text` with normalised line breaks, or an InputError naming the characters that the
    model cannot take: control characters, and for a char model anything outside its
    vocabulary."""
    if not isinstance(text, str):
        raise InputError(f"{what} must be a string, not {type(text).__name__}")
    text = normalize_newlines(text)
    # Cs: lone surrogates, which are not text at all (they can come in through JSON).
    controls = [ch for ch in set(text)
                if unicodedata.category(ch) in ("Cc", "Cs") and ch not in ALLOWED_CONTROLS]
    if controls:
        raise InputError(f"control characters (or lone surrogates) are not allowed in {what}: "
                         f"{describe_chars(controls)}")
    if isinstance(tokenizer, CharTokenizer):
        unknown = [ch for ch in set(text) if ch not in tokenizer.stoi]
        if unknown:
            raise InputError(f"characters outside the model's vocabulary in {what}: "
                             f"{describe_chars(unknown)}; the vocabulary is "
                             f"{''.join(tokenizer.vocab)!r}")
    return text


def printable(text: str) -> str:
    """`text` safe for a terminal: control characters other than newline and tab are
    shown escaped (e.g. ``\\x1b``) instead of being sent raw."""
    if all(unicodedata.category(ch) != "Cc" or ch in ALLOWED_CONTROLS for ch in text):
        return text
    return "".join(ch.encode("unicode_escape").decode("ascii")
                   if unicodedata.category(ch) == "Cc" and ch not in ALLOWED_CONTROLS else ch
                   for ch in text)
