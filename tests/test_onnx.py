"""ONNX Runtime generation on a tiny export (step.onnx) and the engine choice that the
CLI, the app and the MLflow pyfunc share: the eager model's tokens on every engine, dynamic
batch and lengths, the cache written in place, the same bytes on re-export, and the
torch-alone path with onnx and onnxruntime absent."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from gptmini.export.layout import STEP_ONNX
from gptmini.export.programs import cached_forward
from gptmini.inference.engines import load_generator
from gptmini.inference.generation import Sampling, token_stream
from gptmini.inference.loading import load_export
from gptmini.inference.onnx import OnnxGenerator
from tiny_export import build_tiny_export

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_export(tmp_path_factory.mktemp("onnx"), block_size=24)


def test_onnx_steps_take_any_batch_and_length(tiny):
    """The graph's batch and number of new positions are dynamic: each prefill and decode
    matches the eager steps' logits, one step after another, and the bound buffers hold
    the eager cache: ONNX Runtime wrote every step's keys and values in place."""
    generator = load_generator(load_export(tiny.directory), "onnx")
    torch.manual_seed(0)
    with torch.no_grad():
        for batch, length in ((1, 1), (3, 5), (8, 24 - 4)):
            ids = torch.randint(0, tiny.tokenizer.vocab_size, (batch, length))
            logits, cache, window = generator.prefill(ids)
            buffers = [buffer.numpy() for buffer in cache[0].buffers]  # views, not copies
            expected, past = cached_forward(tiny.model, ids, None)
            # The generator's logits are numpy arrays; extend takes a tensor as well.
            torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-5,
                                       rtol=1e-5)
            for _ in range(3):
                next_id = expected.argmax(-1, keepdim=True)
                logits, window = generator.extend(window, cache, next_id)
                expected, past = cached_forward(tiny.model, next_id, past)
                torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-5,
                                           rtol=1e-5)
            assert cache[0].length == length + 3
            eager = [t for pair in past for t in pair]
            assert [b.shape for b in buffers] == [(batch, 2, 24, 8)] * len(eager)
            for buffer, want in zip(buffers, eager, strict=True):
                torch.testing.assert_close(torch.from_numpy(buffer[:, :, :length + 3]), want,
                                           atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_a_batch_keeps_its_rows_through_cache_restarts(tiny):
    """Three different rows, 60 tokens past the 24-token context, greedy and sampled: each
    row's tokens are the eager model's, through the numpy window's restarts (a strided
    slice of the batch's window) and the sampled ids going back in as numpy arrays."""
    generator = load_generator(load_export(tiny.directory), "onnx")
    torch.manual_seed(3)
    prompts = torch.randint(0, tiny.tokenizer.vocab_size, (3, 10))
    for temperature, seed in ((0.0, 1), (0.9, 5)):
        expected = tiny.model.generate(prompts, 60, temperature, 0, 1.0, seed)
        rng = generator.new_generator(seed)
        logits, cache, window = generator.prefill(prompts)
        rows = []
        for i in range(60):
            next_id = generator.sample(logits, temperature, 0, 1.0, rng)
            rows.append(torch.as_tensor(next_id))
            if i + 1 < 60:
                logits, window = generator.extend(window, cache, next_id)
        assert torch.equal(torch.cat(rows, dim=1), expected), temperature


def test_the_pyfunc_generates_with_onnx_runtime(tiny):
    from types import SimpleNamespace

    from gptmini.export.layout import MLFLOW_ARTIFACT
    from gptmini.export.pyfunc import GPTMiniModel

    model = GPTMiniModel()
    model.load_context(SimpleNamespace(artifacts={MLFLOW_ARTIFACT: str(tiny.directory)}))
    texts = model.predict(None, ["ROMEO:"], {"max_new_tokens": 30, "temperature": 0.0})
    assert isinstance(model.exported.generation_model, OnnxGenerator)
    ids = tiny.tokenizer.encode("ROMEO:")
    assert texts == [tiny.tokenizer.decode(list(token_stream(tiny.model, ids,
                                                             Sampling(30, 0.0))))]


def test_the_onnx_files_are_the_same_bytes_on_re_export(tiny, tmp_path):
    again = build_tiny_export(tmp_path / "again", block_size=24).directory
    assert (again / STEP_ONNX).read_bytes() == (tiny.directory / STEP_ONNX).read_bytes()


def test_the_export_readme_generates_with_onnx_runtime_alone(tiny, tmp_path):
    """The README's first block (torch, the tokenizer) and its ONNX Runtime loop, run in a
    fresh `python -I` where this project cannot be imported: the eager model's greedy
    tokens up to the context."""
    import re

    blocks = re.findall(r"```python\n(.*?)```", (tiny.directory / "README.md").read_text(),
                        re.DOTALL)
    onnx_block = next(block for block in blocks if "onnxruntime" in block)
    script = tmp_path / "use_onnx.py"
    script.write_text("import sys\n"
                      "sys.modules['gptmini'] = None  # this project's code must not be needed\n"
                      + blocks[0] + onnx_block)
    proc = subprocess.run([sys.executable, "-I", str(script)], capture_output=True, text=True,
                          cwd=tiny.directory, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    ids = tiny.tokenizer.encode("ROMEO:")
    greedy = list(token_stream(tiny.model, ids, Sampling(24 - len(ids), 0.0)))
    assert proc.stdout.endswith(tiny.tokenizer.decode(greedy) + "\n")
