"""The generation steps the export compiles (gptmini.export.programs): the ONNX graph's
cached step and the torch.export prefill/decode programs compute the eager model's logits
and tokens."""

from __future__ import annotations

import pytest
import torch

from gptmini.export.programs import CachedStep, cached_forward
from gptmini.inference.generation import Sampling, token_stream
from gptmini.inference.loading import load_export
from tiny_export import build_tiny_export

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_export(tmp_path_factory.mktemp("onnx"), block_size=24)


def test_the_cached_step_is_the_eager_model(tiny):
    """CachedStep (what step.onnx is exported from) with its custom attention op: a prompt
    after an empty cache, then one token, then several at once, as the eager steps give."""
    step = CachedStep(tiny.model)
    torch.manual_seed(1)
    ids = torch.randint(0, tiny.tokenizer.vocab_size, (2, 9))
    cache = [torch.zeros(2, 2, 24, 8) for _ in range(2 * tiny.model.n_layer)]
    with torch.no_grad():
        logits, *cache = step(ids[:, :5], torch.tensor(0), *cache)
        torch.testing.assert_close(logits, cached_forward(tiny.model, ids[:, :5], None)[0])
        logits, *cache = step(ids[:, 5:6], torch.tensor(5), *cache)
        torch.testing.assert_close(logits, cached_forward(tiny.model, ids[:, :6], None)[0])
        logits, *cache = step(ids[:, 6:], torch.tensor(6), *cache)
        torch.testing.assert_close(logits, cached_forward(tiny.model, ids, None)[0])
        assert all(float(t[:, :, 9:].abs().max()) == 0 for t in cache)  # nothing past 9


def test_the_torch_export_programs_generate_the_eager_models_tokens(tmp_path):
    """What the CLI and the app run (prefill.pt2 and decode.pt2 through `token_stream`):
    the eager model's tokens for the same seed, greedy and sampled, across cache restarts."""
    from tiny_export import build_tiny_export

    tiny = build_tiny_export(tmp_path / "tiny", block_size=24)
    exported = load_export(tiny.directory)
    assert exported.programs is not None
    ids = tiny.tokenizer.encode("ROMEO:\nThou")
    for sampling in (Sampling(100, 0.0), Sampling(100, 0.9, 5, 0.95, seed=42),
                     Sampling(100, 1.3, seed=7)):
        expected = list(token_stream(tiny.model, ids, sampling))
        assert list(token_stream(exported.programs, ids, sampling)) == expected
        assert list(token_stream(exported.model, ids, sampling)) == expected
