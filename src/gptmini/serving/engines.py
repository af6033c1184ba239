"""Which engine generates: the one choice the CLI, the app and the MLflow pyfunc share.

    onnx         step.onnx on ONNX Runtime, the cache written in place (needs `onnxruntime`)
    aoti         prefill.pt2 + decode.pt2 compiled by AOTInductor on this machine (built on
                 first use, then cached: gptmini.serving.aoti_engine)
    torchscript  model.ts's own methods
    export       prefill.pt2 + decode.pt2, the torch.export programs as Python code
    eager        the GPT rebuilt from model.ts's weights

"auto" takes the first of those the export and the installed packages allow, `aoti` only
once built (it is never compiled unasked): the fastest (docs/speed.md). All run the
library's loop and sampling, so a seed gives the same tokens.
"""

from __future__ import annotations

import importlib.util
from typing import Any

ENGINES = ("onnx", "aoti", "torchscript", "export", "eager")  # fastest first
CHOICES = ("auto", *ENGINES)


class EngineError(RuntimeError):
    """An engine that is unknown, or that the export or this installation lacks: one line.
    (Not an ExportError: gptmini.serving.export imports this module, not the reverse.)"""


def available_engines(exported: Any) -> list[str]:
    """The engines this export can run here, fastest first."""
    from gptmini.serving.aoti_engine import is_built
    from gptmini.serving.onnx_engine import has_onnx

    found = []
    if has_onnx(exported.directory) and importlib.util.find_spec("onnxruntime") is not None:
        found.append("onnx")
    if is_built(exported.directory):
        found.append("aoti")
    return [*found, "torchscript", "export", "eager"]  # every export holds the .pt2 programs


def load_generator(exported: Any, engine: str = "auto") -> Any:
    """The generation model of `engine` (or the fastest available for "auto") for a
    gptmini.serving.export.LoadedExport: anything `gptmini.serving.generation.token_stream`
    runs. An engine the export or this installation lacks is an EngineError that says why."""
    if engine not in CHOICES:
        raise EngineError(f"unknown engine {engine!r}: one of {', '.join(CHOICES)}")
    available = available_engines(exported)
    if engine == "auto":
        engine = available[0]
    elif engine not in (*available, "aoti"):  # aoti: built when asked for
        raise EngineError(f"engine {engine!r} is not available: it needs step.onnx in the "
                          "export, and onnxruntime installed "
                          f"(available: {', '.join(available)})")
    if engine == "onnx":
        from gptmini.serving.onnx_engine import OnnxGenerator

        return OnnxGenerator(exported.directory, exported.block_size)
    if engine == "aoti":
        return _aoti_generator(exported)
    if engine == "export":
        return exported.programs
    if engine == "torchscript":
        return exported.model
    return exported.eager_model


def _aoti_generator(exported: Any) -> Any:
    """The compiled programs, built first where this machine has none (minutes); a build
    that fails (no C++ compiler) is an EngineError."""
    from gptmini.core.errors import first_line
    from gptmini.serving.aoti_engine import AotiGenerator, build

    try:
        folder = build(exported.directory)
    except Exception as exc:  # Inductor raises many kinds (compiler missing, disk full)
        raise EngineError(f"engine 'aoti': AOTInductor could not compile "
                          f"{exported.directory}/'s programs: {first_line(exc)}") from None
    return AotiGenerator(folder, exported.block_size)
