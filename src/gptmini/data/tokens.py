"""Corpus → token files: split by characters, encode in bounded chunks, write flat binaries.

Train is the first ``1 - val_fraction`` of the characters, validation the rest (as
nanoGPT does). Both splits are streamed in chunks cut on line boundaries, so memory
stays flat whatever the corpus size, and BPE chunks are cut only where a whole-file
encoding would also split, so the tokens are identical to encoding the file at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gptmini.core import paths
from gptmini.core.atomic import atomic_path, write_json
from gptmini.core.config import Params, TokenizerConfig
from gptmini.core.progress import progress_bar
from gptmini.data.tokenizers import BpeTokenizer, CharTokenizer, Tokenizer

CHUNK_CHARS = 1 << 20
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def scan_corpus(path: Path) -> tuple[int, list[str]]:
    """Count the characters of the corpus and collect its distinct characters."""
    n_chars, chars = 0, set()
    with open(path, encoding="utf-8", newline="") as fh:
        while block := fh.read(CHUNK_CHARS):
            n_chars += len(block)
            chars.update(block)
    return n_chars, sorted(chars)


def _safe_cut(text: str) -> int:
    """The last index where BPE pre-tokenization is sure to split too, 0 when there is none:
    just after a newline with a non-space character on each side, or else just before a
    space that follows a non-space character and precedes a letter (" word" is one piece)."""
    i = len(text) - 1
    while (i := text.rfind("\n", 0, i)) > 0:
        if not text[i - 1].isspace() and i + 1 < len(text) and not text[i + 1].isspace():
            return i + 1
    i = len(text) - 1
    while (i := text.rfind(" ", 0, i)) > 0:
        if not text[i - 1].isspace() and text[i + 1].isalpha():
            return i
    return 0


def iter_chunks(path: Path, start: int, stop: int, chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """Yield the characters [start, stop) of the file in pieces cut at safe places."""
    with open(path, encoding="utf-8", newline="") as fh:
        skipped = 0
        while skipped < start:
            skipped += len(fh.read(min(chunk_chars, start - skipped)))
        remaining, carry = stop - start, ""
        while remaining > 0:
            block = fh.read(min(chunk_chars, remaining))
            if not block:
                break
            remaining -= len(block)
            text = carry + block
            cut = _safe_cut(text) if remaining > 0 else len(text)
            if cut == 0:
                carry = text
                continue
            carry = text[cut:]
            yield text[:cut]
        if carry:
            yield carry


def encode_split(path: Path, start: int, stop: int, tokenizer: Tokenizer, out: Path,
                 dtype: np.dtype, chunk_chars: int = CHUNK_CHARS) -> int:
    """Encode characters [start, stop) of the corpus into the flat binary `out`."""
    n_tokens, batch = 0, []
    with atomic_path(out) as tmp, open(tmp, "wb") as fh, \
            progress_bar(total=stop - start, unit="char", unit_scale=True, desc=out.stem) as bar:

        def flush() -> None:
            nonlocal n_tokens
            for ids in tokenizer.encode_batch(batch):
                np.asarray(ids, dtype=dtype).tofile(fh)
                n_tokens += len(ids)
            bar.update(sum(len(t) for t in batch))
            batch.clear()

        for chunk in iter_chunks(path, start, stop, chunk_chars):
            batch.append(chunk)
            if len(batch) >= 8:
                flush()
        flush()
    return n_tokens


def make_tokenizer(cfg: TokenizerConfig, corpus_chars: list[str]) -> CharTokenizer | BpeTokenizer:
    if cfg.kind == "char":
        return CharTokenizer(corpus_chars)
    return BpeTokenizer(cfg.encoding)


def prepare(corpus: str | Path, out_dir: str | Path, cfg: TokenizerConfig,
            chunk_chars: int = CHUNK_CHARS) -> dict[str, Any]:
    """Write train.bin, val.bin and tokenizer.json to `out_dir`; return the counts."""
    corpus, out_dir = Path(corpus), Path(out_dir)
    n_chars, chars = scan_corpus(corpus)
    tokenizer = make_tokenizer(cfg, chars)
    dtype = token_dtype(tokenizer.vocab_size)
    boundary = int(n_chars * (1.0 - cfg.val_fraction))
    counts: dict[str, Any] = {"vocab_size": tokenizer.vocab_size}
    for split, (start, stop) in zip(SPLITS, [(0, boundary), (boundary, n_chars)], strict=True):
        n_tokens = encode_split(corpus, start, stop, tokenizer, out_dir / f"{split}.bin",
                                dtype, chunk_chars)
        counts[split] = {"chars": stop - start, "tokens": n_tokens,
                         "chars_per_token": (stop - start) / max(n_tokens, 1)}
    write_json(out_dir / "tokenizer.json", {**tokenizer.definition(), "dtype": dtype.name})
    write_json(out_dir / "counts.json", counts)
    return counts


def load_tokens(path: str | Path, dtype: str | np.dtype) -> np.memmap:
    """Open a token file without reading it into memory."""
    return np.memmap(path, dtype=np.dtype(dtype), mode="r")


def tokenize(params: Params) -> dict[str, Any]:
    """The tokenize stage: the corpus into token files and ``metrics/tokenize.json``."""
    counts = prepare(paths.CORPUS, paths.TOKENS_DIR, params.tokenizer)
    write_json(paths.TOKENIZE_METRICS, counts)
    print(f"{params.tokenizer.kind}: vocabulary {counts['vocab_size']}, "
          f"train {counts['train']['tokens']:,} tokens, val {counts['val']['tokens']:,} tokens")
    return counts
