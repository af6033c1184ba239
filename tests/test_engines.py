"""The engine choice that the CLI, the app and the MLflow pyfunc share
(gptmini.inference.engines): every engine gives the eager model's tokens, `auto` takes the
fastest available, and one the export or the installation lacks is one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gptmini.export.layout import STEP_ONNX
from gptmini.inference.engines import ENGINES, EngineError, load_generator
from gptmini.inference.generation import Sampling, token_stream
from gptmini.inference.loading import load_export
from gptmini.inference.onnx import OnnxGenerator
from helpers import REPO
from tiny_export import build_tiny_export

pytestmark = pytest.mark.usefixtures("one_thread")

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
