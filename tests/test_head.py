"""The chunked output head (gptmini.head) against the plain one, `F.cross_entropy` of the
full logits: the same loss and gradients, never the full logits, and the char model's
training loss unchanged to the bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from gptmini.head import PLAIN_HEAD_MAX_VOCAB, head_loss, head_scores, uses_chunked_head
from gptmini.model import GPT, next_token_loss
from helpers import model_config

N, C, V = 150, 32, 3000  # 150 positions: chunks of 64 leave a tail of 22


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def inputs(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, C, generator=g, dtype=torch.float64)
    weight = torch.randn(V, C, generator=g, dtype=torch.float64) * 0.3
    targets = torch.randint(0, V, (N,), generator=g)
    return hidden.to(dtype), weight.to(dtype), targets


def plain_loss(hidden, weight, targets):
    return F.cross_entropy(F.linear(hidden, weight).float(), targets)


def loss_and_grads(loss_fn, hidden, weight, targets, autocast=False):
    hidden = hidden.clone().requires_grad_()
    weight = weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = loss_fn(hidden, weight, targets)
    loss.backward()
    return [t.detach().double() for t in (loss, hidden.grad, weight.grad)]


def rel_error(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("chunk", [1, 16, 64, 100, 149, 150, 1000])
def test_fp32_loss_and_gradients_equal_the_plain_path(chunk):
    """rtol 1e-5 for the loss and both gradients (each gradient element within 1e-5 of
    its value, plus 1e-5 of the gradient's largest element for those that cancel to ~0)."""
    hidden, weight, targets = inputs()
    want = loss_and_grads(plain_loss, hidden, weight, targets)
    got = loss_and_grads(lambda h, w, t: head_loss(h, w, t, chunk), hidden, weight, targets)
    for name, g, w in zip(("loss", "grad hidden", "grad weight"), got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5 * w.abs().max().item(),
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_bf16_autocast_loss_and_gradients_equal_the_plain_path():
    """Under bf16 autocast both paths make the same bf16 logits and reduce them in float32,
    so the losses may differ only by the order of float32 sums: rtol 1e-5 (what two orders
    of summation of 150 float32 terms can differ by, with margin).

    The gradients come out of bf16 matmuls whose float32 accumulations are rounded to
    bf16, in the plain path too (once for the whole weight gradient; the chunked path
    rounds each chunk's share and adds them in float32), so the two agree to bf16's
    precision, not float32's: within 2**-7 of each other in norm; and the chunked path is
    no less accurate: its error against a float64 reference is at most 1.1x the plain
    path's."""
    hidden, weight, targets = inputs()
    exact = loss_and_grads(plain_loss, hidden.double(), weight.double(), targets)
    plain = loss_and_grads(plain_loss, hidden, weight, targets, autocast=True)
    chunked = loss_and_grads(lambda h, w, t: head_loss(h, w, t, 16), hidden, weight, targets,
                             autocast=True)
    torch.testing.assert_close(chunked[0], plain[0], rtol=1e-5, atol=0)
    for name, c, p, e in zip(("grad hidden", "grad weight"), chunked[1:], plain[1:], exact[1:],
                             strict=True):
        assert rel_error(c, p) <= 2**-7, name
        assert rel_error(c, e) <= 1.1 * rel_error(p, e), name
    # bf16, really: the plain path's gradients are bf16-rounded, far from float32's 1e-7
    assert rel_error(plain[2], exact[2]) > 1e-4


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_without_gradients_the_loss_is_the_same(autocast):
    """Under no_grad or inference_mode (the trainer's estimates) the forward pass computes
    no gradients, and the loss is the one of the gradient path to float32 rounding."""
    hidden, weight, targets = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        with_grads = head_loss(hidden.requires_grad_(), weight, targets, 100)
        with torch.inference_mode():
            without = head_loss(hidden, weight, targets, 100)
    assert with_grads.requires_grad and not without.requires_grad
    torch.testing.assert_close(without, with_grads.detach(), rtol=1e-6, atol=0)


def test_scores_are_the_per_token_nll_and_argmax_of_the_logits():
    hidden, weight, targets = inputs()
    targets[:10] = F.linear(hidden[:10], weight).argmax(-1)  # some right answers
    nll, right = head_scores(hidden.view(3, 50, C), weight, targets.view(3, 50), chunk=16)
    logits = F.linear(hidden, weight)
    assert nll.shape == right.shape == (3, 50)
    torch.testing.assert_close(nll.flatten(), F.cross_entropy(logits, targets, reduction="none"),
                               rtol=1e-5, atol=1e-6)
    assert torch.equal(right.flatten(), logits.argmax(-1) == targets)
    assert right.sum() >= 10


class LargestTensor(TorchDispatchMode):
    """The most elements any operation's result has, forward and backward."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_the_full_logits_are_never_made():
    hidden, weight, targets = inputs()
    hidden.requires_grad_()
    weight.requires_grad_()
    with LargestTensor() as seen:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = head_loss(hidden, weight, targets, chunk=48)
        loss.backward()
        head_scores(hidden.detach(), weight.detach(), targets, chunk=48)
    # one chunk's logits (larger than the weight, V x C); the plain path makes N x V
    assert seen.largest == 48 * V


def test_only_vocabularies_above_the_threshold_are_chunked():
    assert not uses_chunked_head(65) and not uses_chunked_head(PLAIN_HEAD_MAX_VOCAB)
    assert uses_chunked_head(PLAIN_HEAD_MAX_VOCAB + 1) and uses_chunked_head(50257)


TINY = model_config(block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0)  # the head alone


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_char_model_loss_and_gradients_are_bit_identical_to_the_plain_loss(autocast):
    """For a char vocabulary, model(x, y) is today's next_token_loss(model(x), y) to the bit,
    gradients included: the default run's numbers do not move."""
    torch.manual_seed(0)
    model = GPT(TINY, 65)
    assert not model.uses_chunked_head
    x, y = torch.randint(0, 65, (4, 16)), torch.randint(0, 65, (4, 16))
    results = []
    for call in (lambda: model(x, y), lambda: next_token_loss(model(x), y)):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout masks (the default trains with dropout)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = call()
        loss.backward()
        results.append([loss.detach()] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_bpe_sized_model_trains_through_the_chunked_head_and_scripts_to_the_plain_one():
    torch.manual_seed(0)
    vocab = PLAIN_HEAD_MAX_VOCAB + 500
    model = GPT(TINY, vocab)
    assert model.uses_chunked_head
    x, y = torch.randint(0, vocab, (3, 16)), torch.randint(0, vocab, (3, 16))
    chunked = model(x, y)
    chunked.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    plain = next_token_loss(model(x), y)
    plain.backward()
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=0)
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-5 * p.grad.abs().max().item())
    # TorchScript skips the autograd Function: the export computes the plain loss.
    scripted = torch.jit.script(model.eval())
    with torch.no_grad():
        torch.testing.assert_close(scripted(x, y), plain.detach(), rtol=1e-5, atol=0)
        assert torch.equal(scripted(x), model(x))
