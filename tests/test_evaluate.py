from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import model_config
from gptmini.evaluation.metrics import evaluate_tokens, summarize
from gptmini.model import GPT


def test_metric_formulas():
    m = summarize(total_nll=200.0, correct=30, n_tokens=100, n_chars=400)
    assert m["nll"] == pytest.approx(2.0)
    assert m["perplexity"] == pytest.approx(math.exp(2.0))
    assert m["accuracy"] == pytest.approx(0.3)
    assert m["bpc"] == pytest.approx(200.0 / math.log(2) / 400)
    assert m["nats_per_char"] == pytest.approx(0.5)


def test_char_bpc_equals_nll_over_ln2():
    m = summarize(total_nll=123.4, correct=1, n_tokens=99, n_chars=99)
    assert m["bpc"] == pytest.approx(m["nll"] / math.log(2))


@pytest.mark.parametrize("n_tokens", [33, 65, 100])
def test_every_token_is_predicted_once_with_its_window_context(n_tokens):
    torch.manual_seed(0)
    cfg = model_config(block_size=16, n_layer=1, n_head=2, n_embd=16)
    model = GPT(cfg, 11).eval()
    tokens = np.random.default_rng(0).integers(0, 11, size=n_tokens).astype(np.uint16)
    got = evaluate_tokens(model, tokens, n_chars=n_tokens - 1, batch_size=2, progress=False)
    # Reference: one window at a time, no batching.
    total, correct = 0.0, 0
    ids = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():
        for s in range(0, n_tokens - 1, cfg.block_size):
            x = ids[s:min(s + cfg.block_size, n_tokens - 1)][None]
            y = ids[s + 1:s + 1 + x.size(1)][None]
            logits = model(x)
            total += F.cross_entropy(logits[0], y[0], reduction="sum").item()
            correct += int((logits.argmax(-1) == y).sum())
    assert got["tokens"] == n_tokens - 1
    assert got["nll"] == pytest.approx(total / (n_tokens - 1), rel=1e-6)
    assert got["accuracy"] == pytest.approx(correct / (n_tokens - 1))


def test_token_losses_are_the_per_token_terms_of_evaluate_tokens():
    from gptmini.evaluation.metrics import token_losses

    torch.manual_seed(1)
    model = GPT(model_config(block_size=16, n_layer=1, n_head=2, n_embd=16), 11).eval()
    tokens = np.random.default_rng(1).integers(0, 11, size=70).astype(np.uint16)
    nll, right = token_losses(model, tokens, batch_size=2)
    whole = evaluate_tokens(model, tokens, n_chars=69, batch_size=2, progress=False)
    assert nll.shape == right.shape == (69,)
    assert nll.sum() / 69 == pytest.approx(whole["nll"], rel=1e-6)
    assert right.mean() == pytest.approx(whole["accuracy"])
    # Token 20 is predicted from the window starting at 16: tokens 16..19 only.
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens[16:20].astype(np.int64))[None])
    assert nll[19] == pytest.approx(
        F.cross_entropy(logits[0, -1], torch.tensor(int(tokens[20]))).item(), rel=1e-5)
