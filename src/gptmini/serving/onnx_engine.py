"""ONNX Runtime generation: the export's step graph (step.onnx), made by
`torch.onnx.export(..., dynamo=True)` from `CachedStep` (gptmini.serving.steps), and
`OnnxGenerator`, which runs it with `onnxruntime` under the library's loop and sampling
(gptmini.serving.generation).

One graph is both the prefill and the decode: `ids` (B, S) at positions `length` ..
`length` + S - 1 after a cache of `length` positions. The cache is one key and one value
tensor a layer as big as the context (past_key_i, past_value_i in; present_key_i,
present_value_i out), and the attention is ONNX Runtime's GroupQueryAttention (the
com.microsoft domain, which every CPU build of ONNX Runtime has). Bound to the same buffer
as past and present through I/O binding, that kernel writes each step's keys and values in
place: a token costs its arithmetic, not a copy of the cache.

`onnx`, `onnxruntime` and `onnxscript` are imported here only, when a function needs them:
the export's torch-alone path (model.ts, the .pt2 programs) never imports this module's
dependencies.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from gptmini.model import GPT, sample_next
from gptmini.serving.steps import ProgramGenerator, cached_step_program

STEP_ONNX = "step.onnx"
# 20: GELU is one Gelu node (in 18 the exporter spells it as five: Div, Erf, Add, Mul, Mul).
OPSET = 20
MS_DOMAIN = "com.microsoft"


def cache_names(n_layer: int) -> list[str]:
    """key_0, value_0, key_1, ...: the graph's inputs are past_<name>, its outputs
    present_<name>."""
    return [f"{kind}_{i}" for i in range(n_layer) for kind in ("key", "value")]


def _group_query_attention_op() -> Any:
    """com.microsoft GroupQueryAttention as an onnxscript op, with the part of its schema
    this graph uses (the onnx package carries no schema of ONNX Runtime's contrib ops, and
    the exporter needs one to know the outputs)."""
    import onnxscript
    from onnx.defs import OpSchema

    single, optional = (OpSchema.FormalParameterOption.Single,
                        OpSchema.FormalParameterOption.Optional)
    inputs = [("query", "T", single), ("key", "T", optional), ("value", "T", optional),
              ("past_key", "T", optional), ("past_value", "T", optional),
              ("seqlens_k", "M", single), ("total_sequence_length", "M", single)]
    schema = OpSchema(
        "GroupQueryAttention", MS_DOMAIN, 1,
        inputs=[OpSchema.FormalParameter(name, kind, param_option=option)
                for name, kind, option in inputs],
        outputs=[OpSchema.FormalParameter(name, "T")
                 for name in ("output", "present_key", "present_value")],
        type_constraints=[("T", ["tensor(float)"], ""), ("M", ["tensor(int32)"], "")],
        attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT),
                    OpSchema.Attribute("kv_num_heads", OpSchema.AttrType.INT)])
    return onnxscript.values.Op(onnxscript.values.Opset(MS_DOMAIN, 1), schema.name, schema)


def _translation_table() -> dict[Any, Any]:
    """gptmini::cached_attention -> one GroupQueryAttention node (packed qkv, the key and
    value inputs left empty)."""
    group_query_attention = _group_query_attention_op()

    def cached_attention(qkv, past_key, past_value, seqlens_k, total_length, n_head: int):
        return group_query_attention(qkv, None, None, past_key, past_value, seqlens_k,
                                     total_length, num_heads=n_head, kv_num_heads=n_head)

    return {torch.ops.gptmini.cached_attention.default: cached_attention}


def onnx_bytes(model: GPT) -> bytes:
    """The model's CachedStep as an ONNX model, serialized so that the same model gives the
    same bytes: the exporter's metadata (stack traces with this checkout's paths, exporter
    versions) is left out, and the names of the dynamic dimensions are torch.export's."""
    import onnx

    cache = cache_names(model.n_layer)
    onnx_program = torch.onnx.export(
        cached_step_program(model), (), input_names=["ids", "length",
                                                     *(f"past_{n}" for n in cache)],
        output_names=["logits", *(f"present_{n}" for n in cache)], dynamo=True,
        opset_version=OPSET, verbose=False, optimize=True,
        custom_translation_table=_translation_table())
    proto = onnx_program.model_proto
    _strip_metadata(proto.graph)
    del proto.metadata_props[:]
    proto.producer_version = ""
    buffer = io.BytesIO()
    onnx.save_model(proto, buffer)
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
    """step.onnx in out_dir."""
    (out_dir / STEP_ONNX).write_bytes(onnx_bytes(model))


def has_onnx(directory: Path) -> bool:
    return (directory / STEP_ONNX).is_file()


class _Cache:
    """One generation's cache on ONNX Runtime: a buffer per layer's keys and one per its
    values, (B, n_head, block_size, head_size), each bound as both past and present, and a
    logits buffer, all in one I/O binding made once; `length` is the positions filled.

    A decode step's inputs (one token a row, the length) are arrays bound once and written
    in place: binding new ones each token cost about a tenth of a step."""

    def __init__(self, session: Any, batch: int, shape: tuple[int, ...], vocab: int) -> None:
        import numpy as np
        import onnxruntime as ort

        self.session, self.length = session, 0
        self.binding = session.io_binding()
        self.buffers = [ort.OrtValue.ortvalue_from_shape_and_type((batch, *shape), np.float32)
                        for _ in range(len(session.get_inputs()) - 2)]
        names = [arg.name.removeprefix("past_") for arg in session.get_inputs()[2:]]
        for name, buffer in zip(names, self.buffers, strict=True):
            self.binding.bind_ortvalue_input(f"past_{name}", buffer)
            self.binding.bind_ortvalue_output(f"present_{name}", buffer)
        self.logits = np.empty((batch, vocab), np.float32)
        self.binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self.logits))
        self.step_ids, self.step_length = np.empty((batch, 1), np.int64), np.empty((), np.int64)
        self.step_inputs = {"ids": ort.OrtValue.ortvalue_from_numpy(self.step_ids),
                            "length": ort.OrtValue.ortvalue_from_numpy(self.step_length)}
        self.step_bound = False

    def run(self, ids: Any, length: int) -> Any:
        """ids (B, S), a numpy array, after `length` cached positions -> the logits (B, V)
        after the last of them, a numpy array (a copy: the buffer is the next step's)."""
        import numpy as np

        if ids.shape[1] == 1:  # a decode step: into the arrays bound for it
            self.step_ids[...] = ids
            self.step_length[...] = length
            if not self.step_bound:
                for name, value in self.step_inputs.items():
                    self.binding.bind_ortvalue_input(name, value)
                self.step_bound = True
        else:
            self.binding.bind_cpu_input("ids", ids)  # copied: any strides
            self.binding.bind_cpu_input("length", np.array(length, np.int64))
            self.step_bound = False
        self.session.run_with_iobinding(self.binding)
        self.length = length + ids.shape[1]
        return self.logits.copy()


class OnnxGenerator(ProgramGenerator):
    """KV-cache generation on step.onnx with ONNX Runtime on the CPU: ProgramGenerator's
    steps (those `token_stream` calls) with the graph as its prefill (length 0, a new cache)
    and its decode (one token after the cache's length), so the same seed gives the same
    tokens as the other engines up to float rounding.

    Its logits, window and sampled ids are numpy arrays, which ONNX Runtime takes as they
    are (`token_stream` reads a sampled id with `.item()`, as from a tensor; `extend` takes
    a tensor too): with ONNX Runtime's step this fast, the torch calls around it (an argmax,
    a concatenation, conversions) were a large part of the loop's time around each step
    (docs/speed.md). Sampling at a temperature is sample_next's, on a
    tensor sharing memory."""

    def __init__(self, directory: Path, block_size: int, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # As many threads as torch has been given (the CLI's and the app's one by default:
        # one token is too small a job to split), and no spinning between steps.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(directory / STEP_ONNX), options,
                                       providers=["CPUExecutionProvider"])
        past = session.get_inputs()[2].shape  # [batch, n_head, block_size, head_size]
        vocab = session.get_outputs()[0].shape[1]

        def prefill(ids: Any) -> tuple[Any, _Cache]:
            cache = _Cache(session, ids.shape[0], tuple(past[1:]), vocab)
            return cache.run(_array(ids), 0), cache

        def decode(next_id: Any, cache: _Cache) -> tuple[Any, _Cache]:
            return cache.run(_array(next_id), cache.length), cache

        super().__init__(prefill, decode, block_size)

    def prefill(self, idx: torch.Tensor) -> tuple[Any, list[_Cache], Any]:
        logits, cache, window = super().prefill(idx)
        return logits, cache, _array(window)

    def sample(self, logits: Any, temperature: float, top_k: int, top_p: float,
               generator: torch.Generator | None) -> Any:
        if temperature == 0.0:  # numpy's argmax takes the first maximum, as torch's does
            return logits.argmax(axis=-1, keepdims=True)
        return sample_next(torch.from_numpy(logits), temperature, top_k, top_p,
                           generator).numpy()

    @staticmethod
    def _append(window: Any, next_id: Any) -> Any:
        import numpy as np

        return np.concatenate([window, _array(next_id)], axis=1)


def _array(ids: Any) -> Any:
    """ids given as a numpy array or as a CPU tensor, as a numpy array (no copy)."""
    return ids.numpy() if isinstance(ids, torch.Tensor) else ids
