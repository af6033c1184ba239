"""Which engine generates: the one choice the CLI, the app and the MLflow pyfunc share.

    onnx         step.onnx on ONNX Runtime, the cache written in place (needs `onnxruntime`)
    export       prefill.pt2 + decode.pt2, the torch.export programs
    torchscript  model.ts's own methods
    eager        the GPT rebuilt from model.ts's weights

"auto" takes the first of those the export and the installed packages allow: the fastest
(docs/speed.md). All run the library's loop and sampling, so a seed gives the same tokens.
"""

from __future__ import annotations

import importlib.util
from typing import Any

ENGINES = ("onnx", "export", "torchscript", "eager")  # fastest first
CHOICES = ("auto", *ENGINES)


class EngineError(RuntimeError):
    """An engine that is unknown, or that the export or this installation lacks: one line.
    (Not an ExportError: gptmini.serving.export imports this module, not the reverse.)"""


def available_engines(exported: Any) -> list[str]:
    """The engines this export can run here, fastest first."""
    from gptmini.serving.onnx_engine import has_onnx

    found = []
    if has_onnx(exported.directory) and importlib.util.find_spec("onnxruntime") is not None:
        found.append("onnx")
    return [*found, "export", "torchscript", "eager"]  # every export holds the .pt2 programs


def load_generator(exported: Any, engine: str = "auto") -> Any:
    """The generation model of `engine` (or the fastest available for "auto") for a
    gptmini.serving.export.LoadedExport: anything `gptmini.serving.generation.token_stream`
    runs. An engine the export or this installation lacks is an EngineError that says why."""
    if engine not in CHOICES:
        raise EngineError(f"unknown engine {engine!r}: one of {', '.join(CHOICES)}")
    available = available_engines(exported)
    if engine == "auto":
        engine = available[0]
    elif engine not in available:
        raise EngineError(f"engine {engine!r} is not available: it needs step.onnx in the "
                          "export, and onnxruntime installed "
                          f"(available: {', '.join(available)})")
    if engine == "onnx":
        from gptmini.serving.onnx_engine import OnnxGenerator

        return OnnxGenerator(exported.directory, exported.block_size)
    if engine == "export":
        return exported.programs
    if engine == "torchscript":
        return exported.model
    return exported.eager_model
