"""The `aoti` engine on a tiny export: prefill.pt2 and decode.pt2 compiled by AOTInductor
(a real C++ build, into a cache of this machine) give the eager model's tokens, one
stream and a batch whose windows are cut past the context; built once, picked by `auto`
only once built, a failed build one line; `gptmini compile` and `--engine aoti`."""

from __future__ import annotations

import pytest
import torch

from gptmini.inference import aoti as aoti_engine
from gptmini.inference.engines import EngineError, available_engines, load_generator
from gptmini.inference.generation import Sampling, token_stream
from gptmini.inference.loading import load_export
from tiny_export import build_tiny_export

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny export (context 24) and its compiled programs, in a cache of the test's own."""
    root = tmp_path_factory.mktemp("aoti")
    tiny = build_tiny_export(root, block_size=24)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(aoti_engine.CACHE_ENV, str(root / "cache"))
        exported = load_export(tiny.directory)
        before = available_engines(exported)
        generator = load_generator(exported, "aoti")  # compiles
        yield tiny, exported, generator, before


def test_compiled_programs_give_the_eager_tokens(built):
    """Greedy and sampled, 60 tokens after a prompt: the cache restarts twice past the
    24-token context, so the compiled prefill runs on cut windows too."""
    tiny, _, generator, _ = built
    ids = tiny.tokenizer.encode("ROMEO:\nThou")
    for sampling in (Sampling(60, 0.0), Sampling(60, 0.9, 5, 0.95, seed=42)):
        assert (list(token_stream(generator, ids, sampling))
                == list(token_stream(tiny.model, ids, sampling)))


@torch.inference_mode()
def test_a_compiled_batch_reads_its_own_rows(built):
    """Three different rows, 40 tokens (a cache restart): each row's tokens are the eager
    model's for that row. The kernels index inputs with their traced strides, so a window
    cut from the batch, or a decode program traced from a sliced token, reads other rows."""
    tiny, _, generator, _ = built
    torch.manual_seed(3)
    prompts = torch.randint(0, tiny.tokenizer.vocab_size, (3, 10))
    expected = tiny.model.generate(prompts, 40, 0.0, 0, 1.0, 1)
    logits, cache, window = generator.prefill(prompts)
    rows = []
    for i in range(40):
        next_id = logits.argmax(-1, keepdim=True)
        rows.append(next_id)
        if i + 1 < 40:
            logits, window = generator.extend(window, cache, next_id)
    assert torch.equal(torch.cat(rows, dim=1), expected)


def test_auto_takes_the_build_only_once_it_exists(built):
    """Never compiled unasked; once built, the fastest after ONNX Runtime (and so `auto`
    where onnxruntime is not installed)."""
    _, exported, _, before = built
    assert before == ["onnx", "torchscript", "export", "eager"]
    assert available_engines(exported) == ["onnx", "aoti", "torchscript", "export", "eager"]


def test_a_second_load_compiles_nothing(built, monkeypatch):
    tiny, exported, _, _ = built

    def refuse(*args):
        raise AssertionError("compiled again")

    monkeypatch.setattr(aoti_engine, "compile_programs", refuse)
    generator = load_generator(exported, "aoti")
    ids = tiny.tokenizer.encode("ROMEO:")
    assert (list(token_stream(generator, ids, Sampling(5, 0.0)))
            == list(token_stream(tiny.model, ids, Sampling(5, 0.0))))


def test_a_failed_build_is_one_line_and_leaves_no_folder(built, tmp_path, monkeypatch):
    _, exported, _, _ = built
    monkeypatch.setenv(aoti_engine.CACHE_ENV, str(tmp_path / "empty-cache"))

    def fail(programs, folder):
        (folder / "prefill.pt2").write_bytes(b"half")
        raise RuntimeError("C++ compile error: g++ not found\nmore details")

    monkeypatch.setattr(aoti_engine, "compile_programs", fail)
    with pytest.raises(EngineError, match=r"^engine 'aoti': AOTInductor could not compile "
                                          r".*: C\+\+ compile error: g\+\+ not found$"):
        load_generator(exported, "aoti")
    assert not aoti_engine.is_built(exported.directory)
    assert not [p for p in (tmp_path / "empty-cache").iterdir() if p.is_dir()
                and not p.name.startswith(".")]


def test_cli_compile_then_engine_aoti(built, capsys):
    from gptmini.cli import main

    tiny = built[0]
    assert main(["compile", "--export-dir", str(tiny.directory)]) == 0
    out = capsys.readouterr().out
    assert str(aoti_engine.built_dir(tiny.directory)) in out and "--engine aoti" in out
    texts = []
    for engine in ("aoti", "torchscript"):
        assert main(["generate", "ROMEO:", "-n", "40", "-t", "0", "--no-echo", "-q",
                     "--engine", engine, "--export-dir", str(tiny.directory)]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and len(texts[0]) > 40
