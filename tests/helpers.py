"""What the tests share: the repository's paths, default params and small configs, a
Shakespeare-like corpus, hashes, the tiktoken check, and the processes a test left running.
(conftest.py holds only pytest's fixtures and hooks.)"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GPTMINI_SHARED", REPO.parent / "shared"))
TIKTOKEN_CACHE = SHARED / "tiktoken-cache"

_WORDS = (
    "thou", "thee", "the", "king", "lord", "love", "night", "day", "sweet", "death", "good",
    "come", "hath", "doth", "what", "speak", "fair", "heart", "and", "not", "with", "my",
    "your", "his", "her", "noble", "gentle", "sir", "madam",
)


def default_params() -> dict:
    """params.yaml as plain data: the single source of every default."""
    return yaml.safe_load((REPO / "params.yaml").read_text())


def model_config(**overrides):
    """The `model` section of params.yaml with `overrides`, validated."""
    from gptmini.core.config import ModelConfig

    return ModelConfig(**{**default_params()["model"], **overrides})


def train_config(**overrides):
    """The `train` section of params.yaml with `overrides`, validated."""
    from gptmini.core.config import TrainConfig

    return TrainConfig(**{**default_params()["train"], **overrides})


def tokenizer_config(**overrides):
    """The `tokenizer` section of params.yaml with `overrides`, validated."""
    from gptmini.core.config import TokenizerConfig

    return TokenizerConfig(**{**default_params()["tokenizer"], **overrides})


def make_corpus(n_lines: int = 800, seed: int = 0) -> str:
    """A small Shakespeare-like text: speakers, verse lines, blank lines."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        if i % 6 == 0:
            lines += ["", rng.choice(["ROMEO:", "JULIET:", "KING HENRY:", "First Citizen:"])]
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 9))]
        lines.append(" ".join(words).capitalize() + rng.choice([",", ".", ";", "!", "?"]))
    return "\n".join(lines).lstrip() + "\n"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiktoken_available() -> bool:
    if os.environ.get("TIKTOKEN_CACHE_DIR") is None and TIKTOKEN_CACHE.is_dir():
        os.environ["TIKTOKEN_CACHE_DIR"] = str(TIKTOKEN_CACHE)
    import tiktoken

    try:
        tiktoken.get_encoding("gpt2")
    except OSError:  # not cached and no network (requests' errors are OSErrors)
        return False
    return True


needs_tiktoken = pytest.mark.skipif(
    not tiktoken_available(),
    reason=f"tiktoken's gpt2 files are not cached: set TIKTOKEN_CACHE_DIR (looked in "
           f"{TIKTOKEN_CACHE}) or allow network access")


def processes_in(root: Path) -> list:
    """Processes at work under `root` (their working directory or command line), this
    process excepted: a server or queue worker a test started there."""
    import psutil

    root, found = str(root), []
    for proc in psutil.process_iter(["cwd", "cmdline"]):
        try:
            cwd, cmdline = proc.info["cwd"] or "", " ".join(proc.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        inside = cwd == root or cwd.startswith(root + os.sep) or root + os.sep in cmdline
        if proc.pid != os.getpid() and inside:
            found.append(proc)
    return found
