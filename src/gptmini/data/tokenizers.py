"""Tokenizers: character level, or GPT-2 style BPE through tiktoken.

A tokenizer is fully described by a small JSON-able *definition*, written beside
the token files and the export, so anyone can rebuild it without this project.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np


class Tokenizer(Protocol):
    kind: str
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def encode_batch(self, texts: list[str]) -> list[Sequence[int]]: ...
    def definition(self) -> dict[str, Any]: ...


class CharTokenizer:
    """One token per character of a fixed, sorted vocabulary."""

    kind = "char"

    def __init__(self, vocab: Iterable[str]) -> None:
        self.vocab = sorted(set(vocab))
        if any(len(ch) != 1 for ch in self.vocab):
            raise ValueError("a char vocabulary holds single characters")
        self.stoi = {ch: i for i, ch in enumerate(self.vocab)}
        self.vocab_size = len(self.vocab)
        # code point -> id (-1: not in the vocabulary), for vectorised encoding
        self._table = np.full(max(map(ord, self.vocab), default=0) + 2, -1, dtype=np.int64)
        self._table[[ord(ch) for ch in self.vocab]] = np.arange(self.vocab_size)

    def encode_array(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = self._table[np.minimum(codes, len(self._table) - 1)]
        if (ids < 0).any():
            unknown = sorted({ch for ch in text if ch not in self.stoi})
            raise ValueError(f"characters outside the vocabulary: {unknown!r}")
        return ids

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_batch(self, texts: list[str]) -> list[Sequence[int]]:
        return [self.encode_array(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.vocab[i] for i in ids)

    def definition(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "vocab": self.vocab}


class BpeTokenizer:
    """A tiktoken encoding, e.g. ``gpt2``; special tokens are treated as plain text."""

    kind = "bpe"

    def __init__(self, encoding: str = "gpt2", num_threads: int | None = None) -> None:
        import tiktoken

        self.encoding_name = encoding
        self.enc = tiktoken.get_encoding(encoding)
        self.vocab_size = self.enc.n_vocab
        self.num_threads = num_threads or min(8, os.cpu_count() or 1)

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def _encode_array(self, text: str) -> np.ndarray:
        # No special token is allowed or refused: "<|endoftext|>" is plain text, as in
        # encode_ordinary. Straight to numpy: no Python int per token, so the threads
        # below spend little time holding the GIL.
        return self.enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())

    def encode_batch(self, texts: list[str]) -> list[Sequence[int]]:
        with ThreadPoolExecutor(self.num_threads) as pool:
            return list(pool.map(self._encode_array, texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self.enc.decode(list(ids))

    def definition(self) -> dict[str, Any]:
        return {"kind": self.kind, "encoding": self.encoding_name, "vocab_size": self.vocab_size}


def from_definition(definition: dict[str, Any]) -> CharTokenizer | BpeTokenizer:
    kind = definition.get("kind")
    if kind == "char":
        return CharTokenizer(definition["vocab"])
    if kind == "bpe":
        tok = BpeTokenizer(definition["encoding"])
        if tok.vocab_size != definition["vocab_size"]:
            raise ValueError(f"tiktoken encoding {definition['encoding']!r} has {tok.vocab_size} "
                             f"tokens, the definition says {definition['vocab_size']}")
        return tok
    raise ValueError(f"unknown tokenizer kind {kind!r}: must be char or bpe")

class Detokenizer:
    """Token ids to text one token at a time, for streaming and per-token views.

    A BPE token is a run of bytes that can end inside a multi-byte UTF-8 character; its
    text then comes out with the token that completes the character. Joined, the pieces
    are exactly ``tokenizer.decode(ids)`` (for valid UTF-8)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def piece(self, token: int) -> str:
        """The text that `token` completes (possibly empty)."""
        if isinstance(self.tokenizer, BpeTokenizer):
            return self._utf8.decode(self.tokenizer.enc.decode_single_token_bytes(token))
        return self.tokenizer.decode([token])

    def flush(self) -> str:
        """What is left of an unfinished character at the end (a replacement character)."""
        return self._utf8.decode(b"", final=True)
