"""Scoring any text with a model, for `gptmini evaluate` and the app: the evaluate stage's
metrics (NLL, perplexity, accuracy, BPC) over the whole text, and how surprised the model
was by each token."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gptmini.detokenize import Detokenizer
from gptmini.evaluate import evaluate_tokens, summarize, token_losses
from gptmini.inputs import InputError, check_text
from gptmini.tokenizer import Tokenizer


@dataclass(frozen=True)
class EncodedText:
    tokens: np.ndarray  # int64 ids of the whole text
    n_chars: int        # characters spelled by tokens[1:], the predicted ones


def encode_text(text: str, tokenizer: Tokenizer) -> EncodedText:
    """Check and encode a text to score; it needs two tokens (the first is not predicted)."""
    text = check_text(text, tokenizer, "the text")
    ids = tokenizer.encode(text)
    if len(ids) < 2:
        raise InputError(f"the text is {len(ids)} token(s) long: it needs at least 2 (the "
                         "first token is context, the model predicts the rest)")
    n_chars = len(text) - len(tokenizer.decode(ids[:1]))
    return EncodedText(np.asarray(ids, dtype=np.int64), n_chars)


def score(model: torch.nn.Module, encoded: EncodedText, *, batch_size: int = 32,
          progress: bool = False) -> dict[str, float]:
    """The whole-text metrics, exactly as the evaluate stage computes them."""
    return evaluate_tokens(model, encoded.tokens, encoded.n_chars, batch_size=batch_size,
                           progress=progress)


@dataclass(frozen=True)
class Surprise:
    metrics: dict[str, float]
    pieces: list[tuple[str, float | None]]  # text of each token, its NLL in bits (None: first)


def surprise(model: torch.nn.Module, tokenizer: Tokenizer, encoded: EncodedText, *,
             batch_size: int = 32) -> Surprise:
    """The metrics and, token by token, how many bits of surprise each one cost."""
    nll, right = token_losses(model, encoded.tokens, batch_size=batch_size)
    metrics = summarize(float(nll.sum()), int(right.sum()), len(nll), encoded.n_chars)
    detokenizer = Detokenizer(tokenizer)
    bits = [None, *(float(v) / math.log(2) for v in nll)]
    pieces = [(detokenizer.piece(int(t)), b) for t, b in zip(encoded.tokens, bits, strict=True)]
    tail = detokenizer.flush()
    if tail:
        pieces.append((tail, None))
    return Surprise(metrics, pieces)
