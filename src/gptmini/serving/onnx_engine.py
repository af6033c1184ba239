"""ONNX Runtime generation: the export's prefill and decode programs as ONNX graphs
(prefill.onnx, decode.onnx), made by `torch.onnx.export(..., dynamo=True)` from the same
torch.export programs as prefill.pt2 and decode.pt2, and `OnnxGenerator`, which runs them
with `onnxruntime` under the library's loop and sampling (gptmini.serving.generation).

The key/value cache is an explicit input and output of the decode graph (one position
longer out than in), batch and lengths dynamic. Between steps it stays an ONNX Runtime
value: it is handed back to the next step without a copy into numpy or torch.

`onnx`, `onnxruntime` and `onnxscript` are imported here only, when a function needs them:
the export's torch-alone path (model.ts, the .pt2 programs) never imports this module's
dependencies.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from gptmini.model import GPT
from gptmini.serving.steps import ProgramGenerator, step_programs

PREFILL_ONNX = "prefill.onnx"
DECODE_ONNX = "decode.onnx"
# 20: GELU is one Gelu node (in 18 the exporter spells it as five: Div, Erf, Add, Mul, Mul).
OPSET = 20


def onnx_bytes(program: torch.export.ExportedProgram, input_names: list[str],
               output_names: list[str]) -> bytes:
    """`program` as an ONNX model, serialized so that the same program gives the same
    bytes: the exporter's metadata (stack traces with this checkout's paths, exporter
    versions) is left out, and the names of the dynamic dimensions are torch.export's."""
    import onnx

    onnx_program = torch.onnx.export(program, (), input_names=input_names,
                                     output_names=output_names, dynamo=True,
                                     opset_version=OPSET, verbose=False, optimize=True)
    model = onnx_program.model_proto
    _strip_metadata(model.graph)
    del model.metadata_props[:]
    model.producer_version = ""
    buffer = io.BytesIO()
    onnx.save_model(model, buffer)
    return buffer.getvalue()


def _strip_metadata(graph: Any) -> None:
    """Drop per-node metadata (source locations, the torch nodes they came from), which
    differs between checkouts and carries nothing ONNX Runtime uses."""
    for node in graph.node:
        del node.metadata_props[:]
        for attribute in node.attribute:
            if attribute.g is not None and attribute.g.node:
                _strip_metadata(attribute.g)
    for value in (*graph.input, *graph.output, *graph.value_info):
        del value.metadata_props[:]


def write_onnx(model: GPT, out_dir: Path) -> None:
    """prefill.onnx and decode.onnx in out_dir: the steps in the flat layout (a key and a
    value tensor a layer, gptmini.serving.steps)."""
    prefill, decode = step_programs(model, flat=True)
    cache = [f"{kind}_{i}" for i in range(model.n_layer) for kind in ("key", "value")]
    (out_dir / PREFILL_ONNX).write_bytes(
        onnx_bytes(prefill, ["ids"], ["logits", *(f"present_{n}" for n in cache)]))
    (out_dir / DECODE_ONNX).write_bytes(
        onnx_bytes(decode, ["next_id", *(f"past_{n}" for n in cache)],
                   ["logits", *(f"present_{n}" for n in cache)]))


def has_onnx(directory: Path) -> bool:
    return all((directory / name).is_file() for name in (PREFILL_ONNX, DECODE_ONNX))


class OnnxGenerator(ProgramGenerator):
    """KV-cache generation on prefill.onnx and decode.onnx with ONNX Runtime on the CPU:
    ProgramGenerator's steps (those `token_stream` calls) with the two graphs as its prefill
    and decode functions, so the same seed gives the same tokens as the other engines up to
    float rounding. The cache it holds is an ONNX Runtime value."""

    def __init__(self, directory: Path, block_size: int, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # As many threads as torch has been given (the CLI's and the app's one by default:
        # one token is too small a job to split), and no spinning between steps.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions = [ort.InferenceSession(str(directory / name), options,
                                         providers=["CPUExecutionProvider"])
                    for name in (PREFILL_ONNX, DECODE_ONNX)]
        as_value = ort.OrtValue.ortvalue_from_numpy

        # Names looked up once: a session builds new objects for them on every call.
        names = [([arg.name for arg in session.get_inputs()],
                  [arg.name for arg in session.get_outputs()]) for session in sessions]

        def step(which: int, ids: torch.Tensor, past: tuple[Any, ...] = ()
                 ) -> tuple[torch.Tensor, tuple[Any, ...]]:
            # Token ids go in as numpy views of the torch tensors; logits come back as a
            # torch tensor on the output's memory; the cache stays ONNX Runtime values.
            inputs, outputs = names[which]
            feeds = dict(zip(inputs, (as_value(ids.contiguous().numpy()), *past), strict=True))
            logits, *cache = sessions[which].run_with_ort_values(outputs, feeds)
            return torch.from_numpy(logits.numpy()), tuple(cache)

        super().__init__(lambda ids: step(0, ids),
                         lambda next_id, past: step(1, next_id, past), block_size)
