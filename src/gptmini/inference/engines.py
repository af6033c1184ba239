"""Which engine generates: the one choice the CLI, the app and the MLflow pyfunc share.

    onnx         step.onnx on ONNX Runtime, the cache written in place (needs `onnxruntime`)
    aoti         prefill.pt2 + decode.pt2 compiled by AOTInductor on this machine (built on
                 first use, then cached: gptmini.inference.aoti)
    torchscript  model.ts's own methods
    export       prefill.pt2 + decode.pt2, the torch.export programs as Python code
    eager        the GPT rebuilt from model.ts's weights

"auto" takes the first of those the export and the installed packages allow, `aoti` only
once built (it is never compiled unasked): the fastest (docs/speed.md). Each is an `Engine`,
run by the library's loop and sampling, so a seed gives the same tokens.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from gptmini.inference.loading import LoadedExport

ENGINES = ("onnx", "aoti", "torchscript", "export", "eager")  # fastest first
CHOICES = ("auto", *ENGINES)


class Engine(Protocol):
    """What `gptmini.inference.generation.token_stream` generates with: GPT, model.ts, the
    torch.export programs, the compiled programs or the ONNX graph. Logits, windows and ids
    are tensors, or arrays that the same engine's methods take back (ONNX's are numpy)."""

    block_size: int

    def prefill(self, idx: torch.Tensor) -> tuple[Any, Any, Any]:
        """The prompt ids (1, T) -> the next-token logits, the cache, the window."""

    def extend(self, window: Any, cache: Any, next_id: Any) -> tuple[Any, Any]:
        """One sampled id after the window -> its logits and the new window."""

    def sample(self, logits: Any, temperature: float, top_k: int, top_p: float,
               generator: torch.Generator | None) -> Any:
        """The next id (B, 1) from the logits."""

    def new_generator(self, seed: int) -> torch.Generator | None:
        """A generator seeded with `seed` (-1: a random one)."""


class EngineError(RuntimeError):
    """An engine that is unknown, or that the export or this installation lacks: one line.
    (Not an ExportError: gptmini.inference.loading imports this module, not the reverse.)"""


def available_engines(exported: LoadedExport) -> list[str]:
    """The engines this export can run here, fastest first."""
    from gptmini.inference.aoti import is_built
    from gptmini.inference.onnx import has_onnx

    found = []
    if has_onnx(exported.directory) and importlib.util.find_spec("onnxruntime") is not None:
        found.append("onnx")
    if is_built(exported.directory):
        found.append("aoti")
    return [*found, "torchscript", "export", "eager"]  # every export holds the .pt2 programs


def _first_logits(model: Engine, idx: torch.Tensor) -> list[torch.Tensor]:
    """The logits of the prefill of `idx` and of one decode step after it (greedy)."""
    import torch

    logits, cache, window = model.prefill(idx)
    next_id = model.sample(logits, 0.0, 0, 1.0, model.new_generator(0))
    after, _ = model.extend(window, cache, next_id)
    return [torch.as_tensor(x).float() for x in (logits, after)]


def _verified(generator: Engine, exported: LoadedExport, engine: str) -> Engine:
    """`generator`, once its logits over the whole context match model.ts's (whose
    weights load_export checked against the recorded hash): a corrupted engine file that
    still parses would otherwise generate garbage without a word."""
    import torch

    if generator is exported.model:
        return generator
    n = exported.block_size - 1  # every position: the decode step fills the last one
    idx = (torch.arange(n, dtype=torch.long) % exported.tokenizer.vocab_size).unsqueeze(0)
    with torch.inference_mode():
        expected, got = _first_logits(exported.model, idx), _first_logits(generator, idx)
    if any(g.shape != e.shape or not torch.allclose(g, e, atol=1e-3, rtol=1e-3)
           for g, e in zip(got, expected, strict=True)):
        raise EngineError(f"engine {engine!r}: its files in {exported.directory}/ do not "
                          "compute model.ts's logits: they are corrupted; export again "
                          "(dvc repro -f -s export)")
    return generator


def load_generator(exported: LoadedExport, engine: str = "auto") -> Engine:
    """The `Engine` named (or the fastest available for "auto") of an export. One the
    export or this installation lacks is an EngineError that says why."""
    if engine not in CHOICES:
        raise EngineError(f"unknown engine {engine!r}: one of {', '.join(CHOICES)}")
    available = available_engines(exported)
    if engine == "auto":
        engine = available[0]
    return _verified(_generator(exported, engine, available), exported, engine)


def _generator(exported: LoadedExport, engine: str, available: list[str]) -> Engine:
    if engine not in (*available, "aoti"):  # aoti: built when asked for
        raise EngineError(f"engine {engine!r} is not available: it needs step.onnx in the "
                          "export, and onnxruntime installed "
                          f"(available: {', '.join(available)})")
    if engine == "onnx":
        from gptmini.core.errors import first_line
        from gptmini.export.layout import STEP_ONNX
        from gptmini.inference.onnx import OnnxGenerator

        try:
            return OnnxGenerator(exported.directory, exported.block_size)
        except Exception as exc:  # onnxruntime raises its own kinds (a truncated protobuf)
            raise EngineError(f"{exported.directory / STEP_ONNX} cannot be loaded: "
                              f"{first_line(exc)}") from None
    if engine == "aoti":
        return _aoti_generator(exported)
    if engine == "export":
        return exported.programs
    if engine == "torchscript":
        return exported.model
    return exported.eager_model


def _aoti_generator(exported: LoadedExport) -> Engine:
    """The compiled programs, built first where this machine has none (minutes); a build
    that fails (no C++ compiler) is an EngineError."""
    from gptmini.core.errors import first_line
    from gptmini.inference.aoti import AotiGenerator, build

    try:
        folder = build(exported.directory)
    except Exception as exc:  # Inductor raises many kinds (compiler missing, disk full)
        raise EngineError(f"engine 'aoti': AOTInductor could not compile "
                          f"{exported.directory}/'s programs: {first_line(exc)}") from None
    return AotiGenerator(folder, exported.block_size)
