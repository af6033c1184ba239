"""ONNX Runtime generation on a tiny export (step.onnx) and the engine choice that the
CLI, the app and the MLflow pyfunc share: the eager model's tokens on every engine, dynamic
batch and lengths, the cache written in place, the same bytes on re-export, and the
torch-alone path with onnx and onnxruntime absent."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import REPO
from gptmini.export.layout import STEP_ONNX
from gptmini.export.programs import CachedStep, cached_forward
from gptmini.inference.engines import ENGINES, EngineError, load_generator
from gptmini.inference.generation import Sampling, token_stream
from gptmini.inference.loading import load_export
from gptmini.inference.onnx import OnnxGenerator
from tiny_export import build_tiny_export

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_export(tmp_path_factory.mktemp("onnx"), block_size=24)


def test_auto_is_onnx_runtime_and_every_engine_gives_the_eager_tokens(tiny):
    """Greedy and sampled, across the cache restarts past the 24-token context."""
    exported = load_export(tiny.directory)
    assert isinstance(exported.generation_model, OnnxGenerator)
    ids = tiny.tokenizer.encode("ROMEO:\nThou")
    # aoti compiles for a minute: tests/test_aoti.py, with a cache of its own
    generators = {engine: load_generator(exported, engine) for engine in ENGINES
                  if engine != "aoti"}
    assert generators["export"] is exported.programs
    for sampling in (Sampling(60, 0.0), Sampling(60, 0.9, 5, 0.95, seed=42)):
        expected = list(token_stream(tiny.model, ids, sampling))
        for engine, generator in generators.items():
            assert list(token_stream(generator, ids, sampling)) == expected, engine


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


def test_an_engine_the_export_lacks_is_one_line(tiny, tmp_path):
    import shutil

    copy = tmp_path / "export"
    shutil.copytree(tiny.directory, copy)
    (copy / STEP_ONNX).unlink()
    exported = load_export(copy)
    assert not isinstance(exported.generation_model, OnnxGenerator)  # auto: the next fastest
    with pytest.raises(EngineError, match="engine 'onnx' is not available.*step.onnx"):
        load_generator(exported, "onnx")
    with pytest.raises(EngineError, match="unknown engine 'tensorrt'"):
        load_generator(exported, "tensorrt")


def test_cli_engine_flag_chooses_what_generates(tiny, capsys, monkeypatch):
    """`gptmini generate --engine X` generates with X (the same greedy text each time)."""
    from gptmini.cli import main
    from gptmini.inference import engines

    chosen = []
    real = engines.load_generator
    monkeypatch.setattr(engines, "load_generator",
                        lambda exported, engine="auto": chosen.append(engine) or real(
                            exported, engine))
    texts = []
    for engine in ("onnx", "torchscript", "export", "eager", "auto"):
        assert main(["generate", "ROMEO:", "-n", "40", "-t", "0", "--no-echo", "-q",
                     "--engine", engine, "--export-dir", str(tiny.directory)]) == 0
        texts.append(capsys.readouterr().out)
    assert chosen == ["onnx", "torchscript", "export", "eager", "auto"]
    assert len(set(texts)) == 1 and len(texts[0]) > 40


def test_cli_refuses_an_unknown_engine(tiny, capsys):
    from gptmini.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--engine", "tensorrt", "--export-dir", str(tiny.directory)])
    assert exit_info.value.code == 2 and "invalid choice: 'tensorrt'" in capsys.readouterr().err


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


# Runs in a fresh interpreter where onnx, onnxruntime and onnxscript cannot be imported.
WITHOUT_ONNX = r"""
import sys

# A None entry is how Python marks a module as not importable: `import` raises
# ModuleNotFoundError and importlib.util.find_spec answers None, as if not installed.
sys.modules.update(dict.fromkeys(("onnx", "onnxruntime", "onnxscript")))
from gptmini.inference.loading import load_export
from gptmini.inference.generation import Sampling, token_stream

exported = load_export(sys.argv[1])
ids = exported.tokenizer.encode("ROMEO:")
tokens = list(token_stream(exported.generation_model, ids, Sampling(30, 0.0)))
print(type(exported.generation_model).__name__, tokens)
assert all(sys.modules[name] is None for name in ("onnx", "onnxruntime", "onnxscript"))
"""


def test_without_onnx_runtime_generation_falls_back_to_torchscript(tiny, tmp_path):
    """With torch alone (and no compiled programs in the cache), `auto` is model.ts, the
    fastest of the torch-only engines that need no build."""
    proc = subprocess.run([sys.executable, "-c", WITHOUT_ONNX, str(tiny.directory)],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src"),
                               "GPTMINI_AOTI_CACHE": str(tmp_path / "no-builds")})
    assert proc.returncode == 0, proc.stderr
    name, tokens = proc.stdout.strip().split(" ", 1)
    expected = list(token_stream(tiny.model, tiny.tokenizer.encode("ROMEO:"), Sampling(30, 0.0)))
    assert name == "RecursiveScriptModule" and tokens == str(expected)


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
