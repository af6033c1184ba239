"""Text generation for the CLI, the app and the pyfunc: checked prompts and sampling
settings, and a streaming iterator over the model's key/value-cache generation.

`generate_text` is the one sequence every front end runs (check the values, check the
prompt, fix the seed, stream), and `Sampling.from_user` the one place where sampling values
typed by a user are converted and checked; `Sampling()`'s fields are the defaults.

The loop below calls the model's own `prefill`, `sample` and `extend`, the same steps as
the TorchScript export's `generate`, so for a seed the library (eager or scripted model)
and a torch-only user of `model.ts` get the same tokens.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from gptmini.data.text import InputError, check_text
from gptmini.data.tokenizers import Detokenizer, Tokenizer

if TYPE_CHECKING:
    from gptmini.inference.engines import Engine
    from gptmini.inference.loading import LoadedExport

MAX_SEED = 2**63 - 1
# Per request of a server (the app, the pyfunc), so one request cannot hold a worker long.
MAX_NEW_TOKENS = 2000


@dataclass(frozen=True)
class Sampling:
    """How to sample: temperature 0 is greedy; top_k None and top_p 1 are off; seed None
    is a fresh random seed; generation ends after max_new_tokens or before `stop`."""

    max_new_tokens: int = 500
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float = 1.0
    seed: int | None = None
    stop: str | None = None

    @classmethod
    def from_user(cls, *, length: Any, temperature: Any, top_k: Any, top_p: Any,
                  seed: Any = None, stop: Any = None, vocab_size: int,
                  max_tokens: int | None = None) -> Sampling:
        """Checked settings from raw user values: whole floats (5.0, as number fields send
        them) count as whole numbers, any finite number as a temperature or top-p; None is
        off for top-k and stop and random for the seed. Anything else is an InputError
        naming the setting and what it allows (see `check`)."""
        sampling = cls(max_new_tokens=_whole(length), temperature=_real(temperature),
                       top_k=None if top_k is None else _whole(top_k), top_p=_real(top_p),
                       seed=None if seed is None else _whole(seed), stop=stop)
        sampling.check(vocab_size, max_tokens)
        return sampling

    def check(self, vocab_size: int, max_tokens: int | None = None) -> None:
        """An InputError with a clear message for the first value out of range."""
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise InputError(f"length = {self.max_new_tokens!r}: must be a whole number, 1 "
                             "or more")
        if max_tokens is not None and self.max_new_tokens > max_tokens:
            raise InputError(f"length = {self.max_new_tokens}: must be at most {max_tokens}")
        if not _is_number(self.temperature) or self.temperature < 0:
            raise InputError(f"temperature = {self.temperature!r}: must be a number, 0 or "
                             "more (0 is greedy)")
        if self.top_k is not None and (not _is_int(self.top_k)
                                       or not 1 <= self.top_k <= vocab_size):
            raise InputError(f"top-k = {self.top_k!r}: must be a whole number from 1 to the "
                             f"vocabulary size {vocab_size} (leave it out for no top-k)")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise InputError(f"top-p = {self.top_p!r}: must be in (0, 1] (1 is off)")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise InputError(f"seed = {self.seed!r}: must be a whole number from 0 to "
                             f"{MAX_SEED} (leave it out for a random one)")
        if self.stop is not None and (not isinstance(self.stop, str) or self.stop == ""):
            raise InputError(f"stop = {self.stop!r}: must be a non-empty string")


def _whole(value: Any) -> Any:
    """5.0 -> 5; anything else as it is (for `check` to accept or name)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _real(value: Any) -> Any:
    """An int (not a bool) as a float; anything else as it is."""
    return float(value) if _is_int(value) else value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def random_seed() -> int:
    return secrets.randbelow(2**31)


@dataclass(frozen=True)
class Prompt:
    """A checked prompt: its text, the ids the model starts from (the last window), and
    notes for the user about what was changed."""

    text: str
    ids: list[int]
    notices: list[str] = field(default_factory=list)


# The model sees only its context's last tokens; the limit bounds the work of checking and
# encoding what a client sends (the CLI, the app and the pyfunc alike).
MAX_PROMPT_CHARS = 100_000


def _within_limit(prompt: str | None) -> str:
    """The prompt ("" for none); InputError past MAX_PROMPT_CHARS."""
    prompt = prompt or ""
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"the prompt is {len(prompt):,} characters: at most "
                         f"{MAX_PROMPT_CHARS:,}")
    return prompt


def prepare_prompt(text: str, tokenizer: Tokenizer, block_size: int) -> Prompt:
    """Check and encode a prompt. An empty prompt starts from a newline; a prompt longer
    than the context keeps its last `block_size` tokens. Both are said in `notices`."""
    text = check_text(_within_limit(text), tokenizer, "the prompt")
    notices = []
    start = text
    if text == "":
        start = "\n"
        notices.append("the prompt is empty: generation starts from a newline")
    ids = tokenizer.encode(start)
    if len(ids) > block_size:
        notices.append(f"the prompt is {len(ids):,} tokens long: the model sees only the "
                       f"last {block_size} (its context)")
        ids = ids[-block_size:]
    return Prompt(text, ids, notices)


@torch.inference_mode()
def token_stream(model: Engine, ids: Sequence[int], sampling: Sampling) -> Iterator[int]:
    """The sampled token ids, one at a time, after the prompt ids (at most block_size)."""
    generator = model.new_generator(-1 if sampling.seed is None else sampling.seed)
    device = model.device if hasattr(model, "device") else model.wte.weight.device
    idx = torch.tensor([list(ids)], dtype=torch.long, device=device)
    logits, cache, window = model.prefill(idx)
    temperature, top_k, top_p = float(sampling.temperature), sampling.top_k or 0, float(
        sampling.top_p)
    for i in range(sampling.max_new_tokens):
        next_id = model.sample(logits, temperature, top_k, top_p, generator)
        yield int(next_id.item())
        if i + 1 < sampling.max_new_tokens:
            logits, window = model.extend(window, cache, next_id)


def stream(model: Engine, tokenizer: Tokenizer, prompt: Prompt | str,
           sampling: Sampling) -> Iterator[str]:
    """The generated text (not the prompt), piece by piece as it is made. With a stop
    string, generation ends before it and the stop string is not part of the output."""
    if isinstance(prompt, str):
        prompt = prepare_prompt(prompt, tokenizer, model.block_size)
    sampling.check(tokenizer.vocab_size)
    detokenizer = Detokenizer(tokenizer)
    stop, pending = sampling.stop, ""
    for token in token_stream(model, prompt.ids, sampling):
        pending += detokenizer.piece(token)
        if stop is None:
            if pending:
                yield pending
                pending = ""
            continue
        cut = pending.find(stop)
        if cut >= 0:
            if cut:
                yield pending[:cut]
            return
        # Hold back a tail that could be the start of the stop string.
        held = _partial_stop(pending, stop)
        if len(pending) > held:
            yield pending[:len(pending) - held]
            pending = pending[len(pending) - held:]
    pending += detokenizer.flush()
    if stop is not None and stop in pending:
        pending = pending[:pending.find(stop)]
    if pending:
        yield pending


@dataclass(frozen=True)
class Generation:
    """A started generation: the checked prompt (its notices for the user), the settings
    with the seed that was used, and the text as it streams."""

    prompt: Prompt
    sampling: Sampling
    pieces: Iterator[str]


def generate_text(exported: LoadedExport, prompt: str, *, max_tokens: int | None = None,
                  **values: Any) -> Generation:
    """Check the user's sampling `values` (Sampling.from_user's keywords; at most
    `max_tokens` new tokens) and the prompt, fix a random seed where none is given, and
    start streaming with the export's engine. Bad values are InputErrors, raised here,
    before any text."""
    tokenizer = exported.tokenizer
    sampling = Sampling.from_user(**values, vocab_size=tokenizer.vocab_size,
                                  max_tokens=max_tokens)
    checked = prepare_prompt(prompt, tokenizer, exported.block_size)
    if sampling.seed is None:
        sampling = replace(sampling, seed=random_seed())
    model = exported.generation_model
    return Generation(checked, sampling, stream(model, tokenizer, checked, sampling))


def _partial_stop(text: str, stop: str) -> int:
    """Length of the longest end of `text` that is a proper start of `stop`."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0

