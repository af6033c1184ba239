"""The generation steps the export compiles (torch.export, ONNX): a prefill (the prompt ->
the next-token logits and the key/value cache) and a one-token decode (a token and the
cache -> its logits and the cache one position longer), as modules over a GPT's layers.

They grow the cache by concatenation instead of writing into a preallocated one (as
GPT.forward_cached does): traced, a write into a slice becomes a scatter over the whole
cache in every layer (ScatterND and index arithmetic in ONNX, slice_scatter in torch.export),
which cost ONNX Runtime ~15 ms a token against ~0.1 ms for the arithmetic. The length of the
cache is the position, so one graph with a dynamic length serves every position.

Two layouts: `Prefill`/`Decode` carry the cache as one tensor (n_layer, 2, B, n_head, T,
head_size), the torch.export programs' interface (prefill.pt2, decode.pt2); `FlatPrefill`/
`FlatDecode` as one key and one value tensor a layer (B, n_head, T, head_size), the usual
ONNX layout, where each step's new cache is one concatenation with no stacking copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gptmini.model import GPT

KV = list[tuple[torch.Tensor, torch.Tensor]]  # a (keys, values) pair a layer


def cached_forward(model: GPT, idx: torch.Tensor, past: KV | None
                   ) -> tuple[torch.Tensor, KV]:
    """Next-token logits (B, V) after idx (B, T) and every layer's keys and values up to
    and including idx: a prefill when `past` is None, else idx's one token after `past`."""
    start = 0 if past is None else past[0][0].size(2)
    pos = torch.arange(start, start + idx.size(1), dtype=torch.long, device=idx.device)
    x = model.wte(idx) + model.wpe(pos)
    present: KV = []
    for i, block in enumerate(model.blocks):
        q, k, v = block.attn._heads(block.ln_1(x))
        if past is not None:
            k, v = torch.cat([past[i][0], k], dim=2), torch.cat([past[i][1], v], dim=2)
        # A prefill is causal within itself; one new token sees every cached position.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=past is None)
        x = x + block.attn._merge(y)
        x = x + block.mlp(block.ln_2(x))
        present.append((k, v))
    return model.lm_head(model.ln_f(x[:, -1])), present


def _stacked(kv: KV) -> torch.Tensor:
    return torch.stack([torch.stack(pair) for pair in kv])


def _flat(kv: KV) -> tuple[torch.Tensor, ...]:
    return tuple(t for pair in kv for t in pair)


class Prefill(torch.nn.Module):
    """ids (B, T) -> the next-token logits (B, V) and the cache of their keys and values,
    (n_layer, 2, B, n_head, T, head_size)."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, present = cached_forward(self.model, idx, None)
        return logits, _stacked(present)


class Decode(torch.nn.Module):
    """One token (B, 1) after the cache of positions 0..P-1 -> its next-token logits and
    the cache grown to P + 1 positions."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, next_id: torch.Tensor, cache: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        past = [(layer[0], layer[1]) for layer in cache.unbind(0)]
        logits, present = cached_forward(self.model, next_id, past)
        return logits, _stacked(present)


class FlatPrefill(Prefill):
    """Prefill with the cache as key_0, value_0, key_1, ... (B, n_head, T, head_size)."""

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, present = cached_forward(self.model, idx, None)
        return (logits, *_flat(present))


class FlatDecode(Decode):
    """Decode with the cache as key_0, value_0, key_1, ... in and out."""

    def forward(self, next_id: torch.Tensor, *cache: torch.Tensor) -> tuple[torch.Tensor, ...]:
        past = list(zip(cache[0::2], cache[1::2], strict=True))
        logits, present = cached_forward(self.model, next_id, past)
        return (logits, *_flat(present))


def program(module: torch.nn.Module, example: tuple[torch.Tensor, ...],
            dynamic_shapes: dict[str, object]) -> torch.export.ExportedProgram:
    """torch.export of `module`; the nodes' stack traces (absolute paths of this checkout's
    files) are left out."""
    exported = torch.export.export(module, example, dynamic_shapes=dynamic_shapes)
    for node in exported.graph_module.graph.nodes:
        node.meta.pop("stack_trace", None)
    return exported


def example_prompt(model: GPT) -> tuple[torch.Tensor, dict[int, torch.export.Dim]]:
    """Example ids (B, T) for torch.export and their dynamic shape: batch 1 to 4096, length
    1 to the context (example sizes of 2 and more: torch.export fixes a dimension it sees
    at size 1)."""
    shape = {0: torch.export.Dim("batch", min=1, max=4096),
             1: torch.export.Dim("seq", min=1, max=model.block_size)}
    return torch.zeros(2, max(2, min(8, model.block_size)), dtype=torch.long), shape


def step_programs(model: GPT, flat: bool = False
                  ) -> tuple[torch.export.ExportedProgram, torch.export.ExportedProgram]:
    """The prefill and decode steps as torch.export programs, in the stacked or the flat
    layout: batch, prompt length and cache length dynamic."""
    ids, ids_shape = example_prompt(model)
    batch = ids_shape[0]
    past = torch.export.Dim("past", min=1, max=model.block_size - 1)
    length = max(2, min(8, model.block_size - 1))
    shape, dtype = (2, model.n_head, length, model.head_size), model.wte.weight.dtype
    prefill = program(FlatPrefill(model) if flat else Prefill(model), (ids,),
                      {"idx": ids_shape})
    if flat:
        # Distinct tensors: torch.export would take one tensor passed twice for one input.
        cache = tuple(torch.zeros(shape, dtype=dtype) for _ in range(2 * model.n_layer))
        decode = program(FlatDecode(model), (ids[:, :1], *cache),
                         {"next_id": {0: batch}, "cache": ({0: batch, 2: past},) * len(cache)})
    else:
        cache = torch.zeros(model.n_layer, 2, *shape, dtype=dtype)
        decode = program(Decode(model), (ids[:, :1], cache),
                         {"next_id": {0: batch}, "cache": {2: batch, 4: past}})
    return prefill, decode
