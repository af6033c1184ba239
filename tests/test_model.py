from __future__ import annotations

import numpy as np
import pytest
import torch

from gptmini.data.tokenizers import CharTokenizer
from gptmini.model import GPT, next_token_loss
from gptmini.training.trainer import Trainer, lr_at
from helpers import make_corpus, model_config, train_config

TINY = model_config(block_size=32, n_layer=2, n_head=2, n_embd=32)
VOCAB = 40


def test_seed_model_has_exactly_1_230_976_parameters():
    model = GPT(model_config(), 65)  # params.yaml's model section
    assert model.num_parameters() == 1_230_976
    assert model.lm_head.weight is model.wte.weight


def test_later_tokens_never_change_earlier_logits():
    torch.manual_seed(0)
    model = GPT(TINY, VOCAB).eval()
    idx = torch.randint(0, VOCAB, (2, 20))
    changed = idx.clone()
    changed[:, 12:] = (changed[:, 12:] + 7) % VOCAB
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_longer_than_context_is_refused():
    with pytest.raises(ValueError, match="longer than the context"):
        GPT(TINY, VOCAB)(torch.zeros(1, 33, dtype=torch.long))


def test_scripted_model_matches_eager():
    model = GPT(TINY, VOCAB).eval()
    scripted = torch.jit.script(model)
    idx = torch.randint(0, VOCAB, (3, 17))
    with torch.no_grad():
        assert torch.allclose(scripted(idx), model(idx), atol=1e-6)


def test_learning_rate_schedule_warms_up_then_decays_to_min():
    cfg = train_config(warmup_steps=10, learning_rate=1e-2, min_lr=1e-4, schedule="cosine")
    assert lr_at(0, cfg, 100) == pytest.approx(1e-3)
    assert lr_at(9, cfg, 100) == pytest.approx(1e-2)
    assert lr_at(10, cfg, 100) == pytest.approx(1e-2)
    assert lr_at(100, cfg, 100) == pytest.approx(1e-4)
    lrs = [lr_at(s, cfg, 100) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_wsd_schedule_holds_the_peak_then_decays_linearly_over_the_last_fraction():
    cfg = train_config(warmup_steps=10, learning_rate=1e-2, min_lr=1e-4, schedule="wsd",
                       decay_fraction=0.2)
    assert lr_at(9, cfg, 100) == pytest.approx(1e-2)
    assert all(lr_at(s, cfg, 100) == pytest.approx(1e-2) for s in range(10, 81))
    assert lr_at(90, cfg, 100) == pytest.approx(1e-4 + 0.5 * (1e-2 - 1e-4))
    assert lr_at(100, cfg, 100) == pytest.approx(1e-4)
    sqrt = train_config(warmup_steps=10, learning_rate=1e-2, min_lr=1e-4, schedule="wsd",
                        decay_fraction=0.2, decay_shape="sqrt")
    assert lr_at(80, sqrt, 100) == pytest.approx(1e-2)
    assert lr_at(85, sqrt, 100) == pytest.approx(1e-4 + 0.5 * (1e-2 - 1e-4))  # 1 - sqrt(1/4)
    assert lr_at(100, sqrt, 100) == pytest.approx(1e-4)
    cosine = train_config(warmup_steps=10, learning_rate=1e-2, min_lr=1e-4, schedule="cosine")
    assert lr_at(50, cosine, 100) < lr_at(50, cfg, 100)


def test_loss_falls_on_a_tiny_corpus():
    text = make_corpus(300)
    tok = CharTokenizer(text)
    ids = np.asarray(tok.encode(text), dtype=np.uint16)
    split = int(len(ids) * 0.9)
    model = GPT(TINY, tok.vocab_size)
    cfg = train_config(warmup_steps=10, batch_size=16, learning_rate=3e-3,
                       eval_interval=50, eval_iters=4, seed=1, dtype="float32")
    trainer = Trainer(model, ids[:split], ids[split:], cfg, torch.device("cpu"), steps=150)
    result = trainer.run(progress=False)
    first, last = result.evals[0], result.evals[-1]
    assert first["val_loss"] == pytest.approx(np.log(tok.vocab_size), abs=0.3)
    assert last["val_loss"] < first["val_loss"] - 1.0
    assert last["train_loss"] < 2.5


def test_next_token_loss_is_mean_cross_entropy():
    logits = torch.zeros(1, 3, 4)
    targets = torch.tensor([[0, 1, 2]])
    assert next_token_loss(logits, targets).item() == pytest.approx(np.log(4))


def test_attention_dropout_is_its_own_setting():
    torch.manual_seed(0)
    resid_only = GPT(model_config(dropout=0.1, attn_dropout=0.0), VOCAB).train()
    assert all(b.attn.dropout == 0.0 and b.attn.resid_dropout.p == 0.1
               and b.mlp.dropout.p == 0.1 for b in resid_only.blocks)
    attn_only = GPT(model_config(dropout=0.0, attn_dropout=0.5), VOCAB).train()
    assert all(b.attn.dropout == 0.5 and b.attn.resid_dropout.p == 0.0 for b in attn_only.blocks)
    idx = torch.randint(0, VOCAB, (2, 16))
    assert not torch.equal(attn_only(idx), attn_only(idx))  # the probabilities are dropped
    attn_only.eval()
    assert torch.equal(attn_only(idx), attn_only(idx))


def test_attention_maps_are_the_weights_the_model_attends_with():
    torch.manual_seed(0)
    model = GPT(TINY, VOCAB).eval()
    idx = torch.randint(0, VOCAB, (2, 12))
    logits, maps = model.attention_maps(idx)
    assert maps.shape == (2, 2, 2, 12, 12)  # layer, batch, head, query, key
    with torch.no_grad():
        assert torch.allclose(logits, model(idx), atol=1e-6)
        # Each row a distribution over the positions up to its own, none after.
        assert torch.allclose(maps.sum(-1), torch.ones(2, 2, 2, 12), atol=1e-6)
        assert torch.all(maps.triu(1) == 0)
        # Mixing the values with them gives each layer's attention output.
        x = model.wte(idx) + model.wpe(torch.arange(12))
        for layer, block in enumerate(model.blocks):
            h = block.ln_1(x)
            _, _, v = block.attn._heads(h)
            assert torch.allclose(block.attn._merge(maps[layer] @ v), block.attn(h), atol=1e-5)
            x = block(x)


def test_attention_maps_change_neither_training_nor_the_script():
    torch.manual_seed(0)
    model = GPT(TINY, VOCAB)
    scripted = torch.jit.script(model)
    assert not hasattr(scripted, "attention_maps")  # not part of the export
    idx = torch.randint(0, VOCAB, (2, 12))
    torch.manual_seed(1)
    loss = model(idx, idx)
    model.attention_maps(idx)
    torch.manual_seed(1)
    assert torch.equal(model(idx, idx), loss)  # the RNG and the weights untouched


def test_dropout_drops_a_tenth_keeps_the_mean_and_follows_the_seed():
    from gptmini.model import Dropout

    drop = Dropout(0.1).train()
    x = torch.ones(32, 256, 128)
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    assert torch.equal(a, drop(x))  # the global generator's seed decides the mask
    assert not torch.equal(a, drop(x))
    dropped = (a == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.002, dropped
    assert abs(a.mean().item() - 1.0) < 0.005
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
