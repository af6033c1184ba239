"""The export's step graph, step.onnx: `torch.onnx.export(..., dynamo=True)` of `CachedStep`
(gptmini.export.programs), its cached attention as ONNX Runtime's GroupQueryAttention (the
com.microsoft domain, which every CPU build of ONNX Runtime has). gptmini.inference.onnx
runs it.

`onnx` and `onnxscript` are imported only when a function needs them: the export's
torch-alone path never imports them.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from gptmini.export.layout import STEP_ONNX
from gptmini.export.programs import cached_step_program
from gptmini.model import GPT

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
