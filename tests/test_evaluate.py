from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptmini.evaluation.metrics import (
    _windows,
    _windows_in_batches,
    evaluate_tokens,
    sliding_stride,
    summarize,
    token_losses,
)
from gptmini.head import PLAIN_HEAD_MAX_VOCAB
from gptmini.model import GPT
from helpers import default_params, make_corpus, model_config


def test_metric_formulas():
    m = summarize(total_nll=200.0, correct=30, n_tokens=100, n_chars=400)
    assert m["nll"] == pytest.approx(2.0)
    assert m["perplexity"] == pytest.approx(math.exp(2.0))
    assert m["accuracy"] == pytest.approx(0.3)
    assert m["bpc"] == pytest.approx(200.0 / math.log(2) / 400)
    assert m["nats_per_char"] == pytest.approx(0.5)


BPE_SIZED = PLAIN_HEAD_MAX_VOCAB + 500  # scored through the chunked head


@pytest.mark.parametrize("vocab", [11, BPE_SIZED])
@pytest.mark.parametrize("n_tokens", [33, 65, 100])
def test_every_token_is_predicted_once_with_its_window_context(n_tokens, vocab):
    torch.manual_seed(0)
    cfg = model_config(block_size=16, n_layer=1, n_head=2, n_embd=16)
    model = GPT(cfg, vocab).eval()
    tokens = np.random.default_rng(0).integers(0, vocab, size=n_tokens).astype(np.uint16)
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


@pytest.mark.parametrize("vocab", [11, BPE_SIZED])
def test_token_losses_are_the_per_token_terms_of_evaluate_tokens(vocab):
    torch.manual_seed(1)
    model = GPT(model_config(block_size=16, n_layer=1, n_head=2, n_embd=16), vocab).eval()
    tokens = np.random.default_rng(1).integers(0, vocab, size=70).astype(np.uint16)
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


def test_a_char_model_is_scored_through_the_logits_exactly_as_before():
    """The char path of evaluate_tokens and token_losses is the computation they had before
    the chunked head, to the bit: the default run's validation numbers do not move."""
    torch.manual_seed(2)
    model = GPT(model_config(block_size=16, n_layer=1, n_head=2, n_embd=16), 65).eval()
    tokens = np.random.default_rng(2).integers(0, 65, size=16 * 5 + 1).astype(np.uint16)
    ids = torch.from_numpy(tokens.astype(np.int64))
    windows = torch.stack([ids[s:s + 17] for s in range(0, 80, 16)])  # 5 full windows
    with torch.no_grad():
        logits = model(windows[:, :-1]).float()
    y = windows[:, 1:]
    total = F.cross_entropy(logits.reshape(-1, 65), y.reshape(-1), reduction="sum").item()
    got = evaluate_tokens(model, tokens, n_chars=80, batch_size=5, progress=False)
    assert got["nll"] == total / 80
    assert got["accuracy"] == int((logits.argmax(-1) == y).sum()) / 80
    nll, _ = token_losses(model, tokens, batch_size=5)
    assert np.array_equal(nll, F.cross_entropy(logits.transpose(1, 2), y,
                                               reduction="none").flatten().numpy())


def test_a_bpe_sized_batch_never_makes_its_whole_logits(monkeypatch):
    """evaluate_tokens scores a large vocabulary a chunk of positions at a time."""
    import gptmini.evaluation.metrics as metrics

    torch.manual_seed(3)
    model = GPT(model_config(block_size=16, n_layer=1, n_head=2, n_embd=16), BPE_SIZED).eval()
    tokens = np.random.default_rng(3).integers(0, BPE_SIZED, size=200).astype(np.uint16)
    seen = []
    real = metrics.head_scores
    monkeypatch.setattr(metrics, "head_scores", lambda *a: seen.append(a[0].shape) or real(*a))
    monkeypatch.setattr(GPT, "forward", lambda *a: pytest.fail("the full logits were made"))
    evaluate_tokens(model, tokens, n_chars=199, batch_size=8, progress=False)
    assert seen and seen[0] == (8, 16, 16)


# -- the sliding protocol -----------------------------------------------------------------


@pytest.mark.parametrize("block", [16, 15])
@pytest.mark.parametrize("n_tokens", [2, 10, 17, 18, 33, 100, 101])
def test_sliding_windows_predict_each_token_once_with_half_a_context_of_history(
        n_tokens, block):
    """What the batches really score: each token 1..n-1 once, from at most a context of
    inputs, and every token past the first half-window from at least half a context."""
    model = GPT(model_config(block_size=block, n_layer=1, n_head=1, n_embd=8), 11)
    tokens = np.arange(n_tokens) % 11
    stride = sliding_stride(block)
    assert stride == block // 2
    times = np.zeros(n_tokens, dtype=int)
    for index, x, _, keep in _windows_in_batches(model, tokens, 3, "cpu", False, stride):
        assert x.size(1) <= block
        keep = np.ones(index.shape, dtype=bool) if keep is None else keep
        for row, position in zip(*np.nonzero(keep), strict=True):
            t = index[row, position]
            np.add.at(times, t, 1)
            history = position + 1  # inputs index[row, 0] - 1 .. t - 1
            assert index[row, 0] - 1 + history == t
            if t >= block / 2:
                assert history >= block / 2, (t, history)
    assert times[0] == 0 and (times[1:] == 1).all()


def test_the_headline_windows_are_the_non_overlapping_ones():
    for n, block in [(2, 16), (17, 16), (18, 16), (100, 16), (111540, 256)]:
        assert _windows(n, block) == [(s, min(block, n - 1 - s), 0)
                                      for s in range(0, n - 1, block)]


def brute_force_sliding(model: GPT, tokens: np.ndarray, stride: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Per token t = 1..n-1, one forward pass of its own: the first context predicts its
    tokens from the start; token t past it from the window that starts at the first
    multiple of `stride` that keeps t within a context."""
    block = model.block_size
    ids = torch.from_numpy(tokens.astype(np.int64))
    nll, right = [], []
    with torch.no_grad():
        for t in range(1, len(tokens)):
            begin = 0 if t <= block else stride * math.ceil((t - block) / stride)
            assert block / 2 <= t - begin <= block or t < block / 2
            logits = model(ids[begin:t][None])[0, -1].float()
            nll.append(F.cross_entropy(logits, ids[t]).item())
            right.append(int(logits.argmax()) == int(ids[t]))
    return np.asarray(nll), np.asarray(right)


@pytest.mark.parametrize("vocab", [11, BPE_SIZED])
@pytest.mark.parametrize("n_tokens", [12, 33, 70])
def test_the_sliding_protocol_is_one_forward_pass_per_token_with_its_own_context(
        n_tokens, vocab):
    torch.manual_seed(4)
    model = GPT(model_config(block_size=16, n_layer=2, n_head=2, n_embd=16), vocab).eval()
    tokens = np.random.default_rng(4).integers(0, vocab, size=n_tokens).astype(np.uint16)
    stride = sliding_stride(16)
    want_nll, want_right = brute_force_sliding(model, tokens, stride)
    nll, right = token_losses(model, tokens, batch_size=2, stride=stride)
    np.testing.assert_allclose(nll, want_nll, rtol=1e-5, atol=1e-6)
    assert np.array_equal(right, want_right)
    got = evaluate_tokens(model, tokens, n_chars=n_tokens - 1, batch_size=2, progress=False,
                          stride=stride)
    assert got["tokens"] == n_tokens - 1
    assert got["nll"] == pytest.approx(want_nll.mean(), rel=1e-6)
    assert got["accuracy"] == pytest.approx(want_right.mean())
    headline, _ = token_losses(model, tokens, batch_size=2)
    if n_tokens > 17:  # past the first context the two protocols see other histories
        assert not np.allclose(nll, headline, rtol=1e-5, atol=1e-6)
    else:
        assert np.array_equal(nll, headline)


# -- the evaluate stage -----------------------------------------------------------------------


def test_the_evaluate_stage_writes_and_logs_every_protocol(tmp_path, monkeypatch):
    """metrics/evaluate.json: the headline (validation, non-overlapping) under the bare keys,
    the validation split in sliding windows under sliding_*, the training split under
    train_*; each exactly what evaluate_tokens gives, and each logged to the MLflow run."""
    import mlflow

    from gptmini.core import paths
    from gptmini.core.config import parse_params
    from gptmini.data.tokens import load_tokens, prepare
    from gptmini.evaluation.stage import evaluate
    from gptmini.report import PROTOCOLS, protocol_metrics
    from gptmini.training.checkpoint import save_checkpoint

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    raw = default_params()
    raw["model"].update(n_layer=1, n_embd=16, n_head=2, block_size=16)
    raw["evaluate"].update(batch_size=4, device="cpu")
    params = parse_params(raw)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")  # marks the project root for MLflow
    (tmp_path / "corpus.txt").write_text(make_corpus(60))
    prepare(tmp_path / "corpus.txt", paths.TOKENS_DIR, params.tokenizer)
    definition = json.loads(paths.TOKENIZER_JSON.read_text())
    counts = json.loads(paths.COUNTS_JSON.read_text())
    torch.manual_seed(5)
    model = GPT(params.model, definition["vocab_size"]).eval()
    paths.MODEL_DIR.mkdir(parents=True)
    save_checkpoint(paths.CHECKPOINT, model, params.model, definition, 0)

    metrics = evaluate(params)

    written = json.loads(paths.EVALUATE_METRICS.read_text())
    assert written == metrics
    keys = set(summarize(1.0, 1, 1, 1))
    assert set(written) == {f"{prefix}{key}" for prefix in PROTOCOLS for key in keys}
    val = load_tokens(paths.TOKENS_DIR / "val.bin", definition["dtype"])
    train = load_tokens(paths.TOKENS_DIR / "train.bin", definition["dtype"])
    val_chars, train_chars = counts["val"]["chars"] - 1, counts["train"]["chars"] - 1
    expected = {
        "": evaluate_tokens(model, val, val_chars, batch_size=4, progress=False),
        "sliding_": evaluate_tokens(model, val, val_chars, batch_size=4, progress=False,
                                    stride=8),
        "train_": evaluate_tokens(model, train, train_chars, batch_size=4, progress=False),
    }
    for prefix, want in expected.items():
        assert protocol_metrics(written, prefix) == want, prefix
    assert written["sliding_nll"] != written["nll"]
    assert written["train_tokens"] == len(train) - 1 > written["tokens"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = json.loads(paths.RUN_JSON.read_text())["run_id"]
    assert mlflow.get_run(run_id).data.metrics == {k: float(v) for k, v in written.items()}
