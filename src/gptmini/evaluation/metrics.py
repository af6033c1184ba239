"""Exact evaluation over a whole token sequence, and scoring any text with it.

Every token after the first is predicted exactly once, in consecutive non-overlapping
windows of the model's context (the headline protocol, nanoGPT's): the evaluate stage,
`gptmini evaluate` and the app all score through `evaluate_tokens` / `token_losses`, so
they agree to the last digit.

The sliding protocol (`stride=sliding_stride(block)`) also predicts every token once, from
windows of the context that start every `stride` tokens: the first window scores all its
positions, each later one only those the one before did not reach (its last `stride`), so
every token past the first `block` has at least `block - stride` tokens of history.

A large vocabulary (BPE) is scored a chunk of positions at a time through the model's
final hidden states (`gptmini.head.head_scores`), never the whole (batch, context, V)
logits; a small one (char) through the logits, as its training loss is computed.

Bits per character divides the total NLL (in bits) by the characters the predicted
tokens spell, so char and BPE models compare; for a char model it equals NLL / ln 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gptmini.core.progress import progress_bar
from gptmini.data.text import InputError, check_text
from gptmini.data.tokenizers import Detokenizer, Tokenizer
from gptmini.head import head_scores, uses_chunked_head
from gptmini.model import GPT


def summarize(total_nll: float, correct: int, n_tokens: int, n_chars: int) -> dict[str, float]:
    """The reported metrics from the sums: NLL in nats per token, perplexity,
    next-token accuracy, bits per character and nats per character."""
    nll = total_nll / n_tokens
    return {
        "nll": nll,
        "perplexity": math.exp(nll),
        "accuracy": correct / n_tokens,
        "bpc": total_nll / math.log(2) / n_chars,
        "nats_per_char": total_nll / n_chars,
        "tokens": n_tokens,
        "chars": n_chars,
    }


def sliding_stride(block: int) -> int:
    """The sliding protocol's stride for a context of `block` tokens: half of it."""
    return max(1, block // 2)


def _windows(n: int, block: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """(start, length, skip) of the input windows that predict tokens 1..n-1 once each:
    the window of `length` inputs from `start` predicts tokens start+1..start+length, all
    but its first `skip`, which the windows before it predicted. Windows start every
    `stride` tokens (None: `block`, non-overlapping, nothing skipped)."""
    stride = stride or block
    windows, done = [], 0  # done: tokens 1..done are predicted
    for s in range(0, n - 1, stride):
        length = min(block, n - 1 - s)
        windows.append((s, length, done - s))
        done = s + length
        if done == n - 1:
            break
    return windows


def _windows_in_batches(model: torch.nn.Module, tokens: np.ndarray, batch_size: int,
                        device: torch.device | str, progress: bool, stride: int | None = None
                        ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor,
                                            np.ndarray | None]]:
    """For each batch of windows: the indices of the predicted tokens (b, t), the input ids
    (b, t), the targets (b, t) and which targets are scored (b, t), None when all are."""
    if len(tokens) < 2:
        raise ValueError("need at least two tokens to evaluate")
    model.eval().to(device)
    windows = _windows(len(tokens), model.block_size, stride)
    # Full windows go in batches; the one shorter tail window goes alone.
    full = [(s, skip) for s, length, skip in windows if length == model.block_size]
    tail = [w for w in windows if w[1] < model.block_size]
    offsets = np.arange(model.block_size + 1)
    batches = [full[i:i + batch_size] for i in range(0, len(full), batch_size)]
    work = [(np.asarray([s for s, _ in b])[:, None] + offsets, np.asarray([k for _, k in b]))
            for b in batches]
    work += [(np.arange(s, s + length + 1)[None, :], np.asarray([skip]))
             for s, length, skip in tail]
    for index, skips in progress_bar(work, desc="evaluate", disable=not progress):
        ids = torch.from_numpy(np.asarray(tokens[index], dtype=np.int64)).to(device)
        keep = None if not skips.any() else offsets[None, :index.shape[1] - 1] >= skips[:, None]
        yield index[:, 1:], ids[:, :-1], ids[:, 1:], keep


def _plain_head(model: torch.nn.Module) -> bool:
    """Whether to score through the full logits, as the model's own training loss does for
    its vocabulary (`gptmini.head.uses_chunked_head`)."""
    return not uses_chunked_head(model.lm_head.weight.size(0))


def _scores(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, reduction: str
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The NLL in nats of targets y (b, t) after inputs x (b, t), summed ("sum") or per
    token ("none", (b, t)), and whether each target was the most likely token (b, t). A
    large vocabulary goes through `head_scores`, a chunk of positions at a time, never the
    whole (b, t, V) logits; a small one through the logits, as its training loss is."""
    if _plain_head(model):
        logits = model(x).float()
        if reduction == "sum":
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                  reduction="sum")
        else:
            nll = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")
        return nll, logits.argmax(-1) == y
    nll, right = head_scores(model.hidden(x), model.lm_head.weight, y)
    return (nll.double().sum() if reduction == "sum" else nll), right


@torch.inference_mode()
def evaluate_tokens(model: GPT, tokens: np.ndarray, n_chars: int, *, batch_size: int = 32,
                    device: torch.device | str = "cpu", progress: bool = True,
                    stride: int | None = None) -> dict[str, float]:
    """Evaluate `model` on `tokens`; `n_chars` is the number of characters spelled by
    tokens[1:] (the predicted ones). `stride`: None for non-overlapping windows (the
    headline), `sliding_stride(model.block_size)` for the sliding protocol."""
    total_nll, correct = 0.0, 0
    for _, x, y, keep in _windows_in_batches(model, tokens, batch_size, device, progress,
                                             stride):
        if keep is None:  # every target scored: the whole batch summed at once
            nll, right = _scores(model, x, y, "sum")
        else:
            nll, right = _scores(model, x, y, "none")
            mask = torch.from_numpy(keep).to(nll.device)
            nll, right = nll[mask].double().sum(), right[mask]
        total_nll += nll.item()
        correct += int(right.sum().item())
    return summarize(total_nll, correct, len(tokens) - 1, n_chars)


@torch.inference_mode()
def token_losses(model: GPT, tokens: np.ndarray, *, batch_size: int = 32,
                 device: torch.device | str = "cpu", progress: bool = False,
                 stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per predicted token (tokens[1:], in order, with the same windows as
    `evaluate_tokens` for the same `stride`): its NLL in nats and whether it was the most
    likely token."""
    nll_out = np.zeros(len(tokens), dtype=np.float64)
    right_out = np.zeros(len(tokens), dtype=bool)
    for index, x, y, keep in _windows_in_batches(model, tokens, batch_size, device, progress,
                                                 stride):
        nll, right = _scores(model, x, y, "none")
        scored = np.ones(index.shape, dtype=bool) if keep is None else keep
        nll_out[index[scored]] = nll.cpu().numpy()[scored]
        right_out[index[scored]] = right.cpu().numpy()[scored]
    return nll_out[1:], right_out[1:]


# -- scoring any text (gptmini evaluate, the app) ----------------------------------------


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
