from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from gptmini.core.env import resolve_path_variables

# The test session is an entry point like the CLI: relative path variables (the README's
# `export TIKTOKEN_CACHE_DIR=../shared/tiktoken-cache`) become absolute here, so the
# subprocesses that tests start in temporary directories inherit paths that still work.
resolve_path_variables()

from helpers import make_corpus, processes_in  # noqa: E402 (after the paths are absolute)


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus" / "input.txt"
    path.parent.mkdir()
    path.write_text(make_corpus(), encoding="utf-8")
    return path


@pytest.fixture
def one_thread():
    """Token-by-token generation is too small a job to split across threads, and split it
    only waits on busy cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_sessionfinish(session, exitstatus):
    """No test leaves a process behind: any still running in the session's temporary
    directories is named, killed, and fails the run."""
    import psutil

    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or factory._basetemp is None:
        return
    procs = processes_in(factory.getbasetemp())
    if not procs:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            print(f"\nleft running by the tests, killed: {proc.pid} "
                  f"{' '.join(proc.cmdline())[:200]}")
            proc.kill()
    psutil.wait_procs(procs, timeout=30)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
