"""The small core: path variables made absolute at entry points, and progress that stays
readable in a log."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptmini.core.env import absolute, checkout_of, resolve_path_variables
from gptmini.core.progress import LOG_LINES, progress_bar
from helpers import REPO, TIKTOKEN_CACHE, needs_tiktoken


def test_relative_path_variables_become_absolute_against_the_start_directory(tmp_path):
    environ = {"TIKTOKEN_CACHE_DIR": "../cache", "GPTMINI_DATA_MIRROR": "file://mirror/x",
               "GPTMINI_EXPORT_DIR": "/abs/export", "HOME": "relative/but/not/a/path/var"}
    changed = resolve_path_variables(environ, cwd=tmp_path / "work")
    assert environ["TIKTOKEN_CACHE_DIR"] == str(tmp_path / "cache")
    assert environ["GPTMINI_DATA_MIRROR"] == f"file://{tmp_path / 'work/mirror/x'}"
    assert environ["GPTMINI_EXPORT_DIR"] == "/abs/export"
    assert environ["HOME"] == "relative/but/not/a/path/var"
    assert set(changed) == {"TIKTOKEN_CACHE_DIR", "GPTMINI_DATA_MIRROR"}


def test_a_dvc_temporary_workspace_resolves_against_its_checkout(tmp_path):
    checkout = tmp_path / "repo"
    workspace = checkout / ".dvc/tmp/exps/tmpabc123"
    workspace.mkdir(parents=True)
    (tmp_path / "shared/cache").mkdir(parents=True)
    assert checkout_of(workspace) == checkout
    assert checkout_of(checkout) is None
    # "../shared/cache" exists only against the checkout the user typed it in.
    assert absolute("../shared/cache", workspace) == str(tmp_path / "shared/cache")
    # A path that exists in the workspace itself stays there.
    (workspace / "data").mkdir()
    assert absolute("data", workspace) == str(workspace / "data")


@pytest.mark.slow  # a BPE export in a child process: half a minute
@needs_tiktoken
def test_the_bpe_export_check_passes_with_a_relative_tiktoken_cache(tmp_path):
    """The README's `export TIKTOKEN_CACHE_DIR=../shared/tiktoken-cache`, verbatim: a test
    session started with a relative cache path runs the BPE export check, whose subprocess
    works in a temporary directory."""
    cache = Path(os.environ.get("TIKTOKEN_CACHE_DIR", TIKTOKEN_CACHE))
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": os.path.relpath(cache, REPO)}
    assert not Path(env["TIKTOKEN_CACHE_DIR"]).is_absolute()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_export.py::test_bpe_export_is_usable_with_torch_and_tiktoken_alone"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 passed" in proc.stdout


def test_progress_is_a_few_lines_when_not_on_a_terminal():
    log = io.StringIO()  # isatty() is False, like CI or `dvc repro > log`
    with progress_bar(total=4000, desc="train", stream=log) as bar:
        for _ in range(4000):
            bar.update()
    lines = log.getvalue().splitlines()
    assert LOG_LINES <= len(lines) <= LOG_LINES + 3
    assert "\r" not in log.getvalue()
    assert lines[-1].startswith("train: 100%") and "4000/4000" in lines[-1]


def test_a_bar_left_open_elsewhere_in_the_process_does_not_scramble_the_lines():
    from tqdm import tqdm

    other = tqdm(total=10, file=io.StringIO())  # as the bar of a run stopped by an error
    try:
        log = io.StringIO()
        with progress_bar(total=4000, desc="train", stream=log) as bar:
            for _ in range(4000):
                bar.update()
    finally:
        other.close()
    lines = log.getvalue().splitlines()
    assert LOG_LINES <= len(lines) <= LOG_LINES + 3, lines
    assert "\x1b" not in log.getvalue()  # no cursor moves to another line


def test_the_training_loop_logs_a_few_lines_when_not_on_a_terminal(capsys):
    import numpy as np
    import torch

    from gptmini.model import GPT
    from gptmini.training.trainer import Trainer
    from helpers import model_config, train_config

    tokens = np.random.default_rng(0).integers(0, 11, size=3000).astype(np.uint16)
    trainer = Trainer(GPT(model_config(n_layer=1, n_embd=16, n_head=2, block_size=8), 11),
                      tokens[:2500], tokens[2500:],
                      train_config(warmup_steps=2, batch_size=2, eval_interval=100,
                                   eval_iters=1, dtype="float32"),
                      torch.device("cpu"), steps=200)
    trainer.run()  # pytest's captured stderr is no terminal
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train")]
    assert LOG_LINES <= len(lines) <= LOG_LINES + 3, lines  # not one per step (200)
    assert "loss=" in lines[-1]


def test_progress_over_an_iterable_counts_it():
    log = io.StringIO()
    assert list(progress_bar(range(50), desc="evaluate", stream=log)) == list(range(50))
    assert "50/50" in log.getvalue().splitlines()[-1]


def test_a_native_kernels_process_is_left_unpinned():
    """`import gptmini` pins nothing in a process that native_kernels_env started; MKL picks
    its own path there."""
    from gptmini.core.numerics import KERNELS_ENV, PINS, native_kernels_env

    env = native_kernels_env({**os.environ, **PINS})
    assert env[KERNELS_ENV] == "native" and env["MKL_CBWR"] == "AUTO"
    assert "ATEN_CPU_CAPABILITY" not in env and "ONEDNN_MAX_CPU_ISA" not in env
    code = ("import os, gptmini; from gptmini.core.numerics import kernels; "
            "print(kernels(), os.environ.get('ATEN_CPU_CAPABILITY'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    assert out == ["native", "None"]
    pinned = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True,
                            env={k: v for k, v in os.environ.items() if k not in PINS}
                            ).stdout.split()
    assert pinned == ["pinned", "avx2"]
