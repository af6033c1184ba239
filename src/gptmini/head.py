"""The tied output head's loss and per-token scores, without the full logits.

With gpt2's 50,257 tokens at batch 32 x 256, the plain head makes 412M logits: 0.8 GB in
bf16, then a 1.6 GB float32 copy for the loss, and log-softmax and its gradient each pass
over gigabytes. Here the logits are made `chunk` positions at a time and dropped at once
(the idea of "cut" or fused cross-entropy). The loss needs, per position, only the
log-sum-exp of its logits (in float32) and its target's logit. Its gradient with respect
to a chunk's logits is (softmax - one-hot of the target) / N, which the forward pass has
at hand, so, when gradients are wanted, the forward pass turns each chunk of logits into
that gradient in place and accumulates the gradients of the hidden states and of the tied
weight from it; backward only scales them by the incoming gradient. A step so does the
plain head's three matmuls of the logits' size (logits, d hidden, d weight); recomputing
the logits in backward instead would take a fourth, a third more of a BPE step's largest
cost, to save memory that is small already (the gradients kept for backward are the
size of the hidden states and of the weight: 30 MB for gpt2).

The matmuls run in the autocast dtype when autocast is on (bf16, as `F.linear` would under
it) and in the weight's dtype otherwise; softmax, log-sum-exp and the weight gradient's
sum over chunks are float32. The result is the plain path's, `F.cross_entropy(logits.float(),
targets)`, up to the order of float32 sums and bf16 rounding (tests/test_head.py).

Small vocabularies keep the plain head (`uses_chunked_head`): see `PLAIN_HEAD_MAX_VOCAB`.
Device-agnostic: nothing here is CPU- or CUDA-specific, and nothing waits on the device.
"""

from __future__ import annotations

import torch

# The sizes below, and the measurements behind them: docs/speed.md#the-chunked-output-heads-sizes
# Up to this vocabulary the plain head: the char model's loss through the full logits.
PLAIN_HEAD_MAX_VOCAB = 1024
# Positions whose logits one matmul makes: few enough chunks that adding their partial
# weight gradients costs a few percent of the head.
CHUNK = 1024
# Positions whose float32 softmax is taken at once: small enough to stay in cache.
PIECE = 64


def uses_chunked_head(vocab_size: int) -> bool:
    """Whether a model with this vocabulary trains and scores through the chunked head."""
    return vocab_size > PLAIN_HEAD_MAX_VOCAB


def compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The matmuls' dtype: autocast's when it is on for the hidden states' device (as
    `F.linear` would run under it), else the weight's."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of hidden (N, C) @ weight (V, C)^T against targets (N,), with the
    gradients computed in forward when `grads` (see the module's docstring)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk: int, dtype: torch.dtype, grads: bool) -> torch.Tensor:
        n, piece = hidden.size(0), min(PIECE, chunk)
        nll = torch.empty(n, dtype=torch.float32, device=hidden.device)
        if grads:
            grad_hidden = torch.empty_like(hidden)
            # transposed, (C, V): h^T @ d logits runs faster than d logits^T @ h
            grad_weight_t = torch.zeros(weight.shape[::-1], dtype=torch.float32,
                                        device=weight.device)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            # one buffer for every chunk's logits: a fresh one each time costs the CPU as
            # much in page faults as the softmax
            buffer = torch.empty(min(chunk, n), weight.size(0), dtype=dtype,
                                 device=hidden.device)
            for c in range(0, n, chunk):
                h = hidden[c:c + chunk].to(dtype)
                logits = torch.mm(h, w.t(), out=buffer[:h.size(0)])
                # (rows, V): becomes N x d loss / d logits in place
                for s in range(0, logits.size(0), piece):
                    rows = logits[s:s + piece]
                    at = slice(c + s, c + s + rows.size(0))
                    t = targets[at, None]
                    if not grads:
                        logp = torch.log_softmax(rows, dim=1, dtype=torch.float32)
                        nll[at] = -logp.gather(1, t)[:, 0]
                        continue
                    probs = torch.softmax(rows, dim=1, dtype=torch.float32)
                    # log-sum-exp = the largest logit - log of its probability, which is
                    # at least 1/V and so never underflows
                    lse = rows.amax(dim=1).float() - probs.amax(dim=1).log()
                    nll[at] = lse - rows.gather(1, t)[:, 0].float()
                    probs.scatter_add_(1, t, torch.full_like(t, -1, dtype=probs.dtype))
                    rows.copy_(probs)
                if grads:
                    grad_hidden[c:c + chunk] = logits @ w
                    grad_weight_t += h.t() @ logits
        if grads:
            ctx.save_for_backward(grad_hidden, grad_weight_t.t().contiguous())
        ctx.n, ctx.weight_dtype = n, weight.dtype
        return nll.sum() / n

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_loss.float() / ctx.n
        return ((grad_hidden * scale).to(grad_hidden.dtype),
                (grad_weight * scale).to(ctx.weight_dtype), None, None, None, None)


def head_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
              chunk: int = CHUNK) -> torch.Tensor:
    """Mean cross-entropy (nats per token) of the head `weight` (V, C) on the hidden states
    (..., C) against targets (...): `next_token_loss(hidden @ weight.T, targets)` with the
    logits of `chunk` positions at a time, differentiable in hidden and weight (once)."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, not {chunk}")
    flat = hidden.reshape(-1, hidden.size(-1))
    grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _ChunkedCrossEntropy.apply(flat, weight, targets.reshape(-1), chunk,
                                      compute_dtype(hidden, weight), grads)


@torch.no_grad()
def head_scores(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk: int = PIECE) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position of hidden (..., C): the NLL of its target in nats (float32) and whether
    the target is the most likely token (`argmax` of its logits), both shaped like targets,
    `chunk` positions' logits at a time."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, not {chunk}")
    flat, y = hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1)
    dtype = compute_dtype(hidden, weight)
    nll = torch.empty(y.shape, dtype=torch.float32, device=hidden.device)
    right = torch.empty(y.shape, dtype=torch.bool, device=hidden.device)
    with torch.autocast(hidden.device.type, enabled=False):
        w = weight.to(dtype)
        for s in range(0, flat.size(0), chunk):
            logits = flat[s:s + chunk].to(dtype) @ w.t()
            logp = torch.log_softmax(logits, dim=1, dtype=torch.float32)
            nll[s:s + chunk] = -logp.gather(1, y[s:s + chunk, None])[:, 0]
            right[s:s + chunk] = logits.argmax(dim=1) == y[s:s + chunk]
    return nll.view(targets.shape), right.view(targets.shape)
