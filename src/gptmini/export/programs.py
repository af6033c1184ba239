"""The generation steps the export compiles (torch.export, ONNX): a prefill (the prompt ->
the next-token logits and the key/value cache) and a one-token decode (a token and the
cache -> its logits and the cache one position longer), as modules over a GPT's layers.

`Prefill`/`Decode` (prefill.pt2, decode.pt2) grow the cache by concatenation instead of
writing into a preallocated one (as GPT.forward_cached does): traced, a write into a slice
becomes a scatter over the whole cache in every layer. The length of the cache is the
position, so one graph with a dynamic length serves every position. Their cache is one
tensor (n_layer, 2, B, n_head, T, head_size).

`CachedStep` (step.onnx) is both steps in one graph over a cache of the whole context,
one key and one value tensor a layer (B, n_head, block_size, head_size): its attention is
the custom op `gptmini::cached_attention`, which the ONNX export turns into ONNX Runtime's
GroupQueryAttention. Given the same buffer as past and present, that kernel writes the
new positions in place, so a token costs no copy of the cache (gptmini.inference.onnx).

`gptmini.inference.programs.ProgramGenerator` runs them under the library's generation loop.
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
    if past is None:
        return _prefill(model, idx)
    return _decode(model, idx, past)


def _prefill(model: GPT, idx: torch.Tensor) -> tuple[torch.Tensor, KV]:
    pos = torch.arange(0, idx.size(1), dtype=torch.long, device=idx.device)
    x = model.wte(idx) + model.wpe(pos)
    present: KV = []
    for block in model.blocks:
        q, k, v = block.attn._heads(block.ln_1(x))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + block.attn._merge(y)
        x = x + block.mlp(block.ln_2(x))
        present.append((k, v))
    return model.lm_head(model.ln_f(x[:, -1])), present


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """torch's fused attention (the decode.pt2 program's); the one query sees every position."""
    return F.scaled_dot_product_attention(q, k, v)


def _decode(model: GPT, next_id: torch.Tensor, past: KV) -> tuple[torch.Tensor, KV]:
    """One token a row, computed on (B, C) rows rather than (B, 1, C): its linear layers are
    one matmul-with-bias each, and its heads a reshape without transposes (T is 1). About
    half the graph nodes of the prefill's layer, and the per-node overhead is what a token
    of a model this small costs."""
    position = past[0][0].size(2)
    x = model.wte(next_id[:, 0]) + model.wpe.weight[position]
    batch, width = x.shape
    heads = (batch, model.n_head, 1, model.head_size)
    present: KV = []
    for block, (past_k, past_v) in zip(model.blocks, past, strict=True):
        q, k, v = block.attn.c_attn(block.ln_1(x)).split(width, dim=1)
        k = torch.cat([past_k, k.reshape(heads)], dim=2)
        v = torch.cat([past_v, v.reshape(heads)], dim=2)
        y = _sdpa(q.reshape(heads), k, v)
        x = x + block.attn.c_proj(y.reshape(batch, width))
        x = x + block.mlp(block.ln_2(x))
        present.append((k, v))
    return model.lm_head(model.ln_f(x)), present


def _stacked(kv: KV) -> torch.Tensor:
    return torch.stack([torch.stack(pair) for pair in kv])


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


@torch.library.custom_op("gptmini::cached_attention", mutates_args=())
def cached_attention(qkv: torch.Tensor, past_key: torch.Tensor, past_value: torch.Tensor,
                     seqlens_k: torch.Tensor, total_length: torch.Tensor, n_head: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal attention of S new positions after a cache, with ONNX Runtime's
    GroupQueryAttention semantics (packed qkv, one head count for queries and keys):

    qkv (B, S, 3C) the new positions' queries, keys and values; past_key / past_value
    (B, n_head, M, head_size) a cache of M >= total_length positions; total_length (int32
    scalar) the positions filled after this step, so the new ones are total_length - S ..
    total_length - 1; seqlens_k (int32, B) total_length - 1 for every row. Returns the
    attention output (B, S, C) and the cache with the new keys and values written in.
    Here the cache is copied (a custom op's outputs must not alias its inputs); in ONNX
    Runtime, with the same buffer bound as past and present, it is written in place."""
    batch, seq, _ = qkv.shape
    total, head_size = int(total_length), past_key.size(-1)
    start = total - seq
    q, k, v = (t.reshape(batch, seq, n_head, head_size).transpose(1, 2)
               for t in qkv.split(n_head * head_size, dim=2))
    present_key, present_value = past_key.clone(), past_value.clone()
    present_key[:, :, start:total] = k
    present_value[:, :, start:total] = v
    # New position start + i sees the cached positions and the new ones up to itself.
    seen = (torch.arange(total, device=qkv.device)[None, :]
            <= torch.arange(start, total, device=qkv.device)[:, None])
    y = F.scaled_dot_product_attention(q, present_key[:, :, :total],
                                       present_value[:, :, :total], attn_mask=seen)
    return y.transpose(1, 2).reshape(batch, seq, n_head * head_size), present_key, present_value


@cached_attention.register_fake
def _(qkv, past_key, past_value, seqlens_k, total_length, n_head):
    batch, seq, width = qkv.shape
    return (qkv.new_empty(batch, seq, width // 3), torch.empty_like(past_key),
            torch.empty_like(past_value))


class CachedStep(torch.nn.Module):
    """Prefill and decode in one: ids (B, S) at positions length .. length + S - 1 after a
    cache of `length` positions (an int64 scalar: 0 for a prefill) -> the next-token
    logits (B, V) after the last of them, and the cache with their keys and values in.
    The cache is past_key_0, past_value_0, past_key_1, ... each (B, n_head, block_size,
    head_size), the whole context whatever the length."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, length: torch.Tensor, *past: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        model = self.model
        batch, seq = ids.shape
        x = model.wte(ids) + model.wpe(length + torch.arange(seq, device=ids.device))
        total = (length + seq).to(torch.int32)
        seqlens_k = (total - 1).expand(batch)
        present: list[torch.Tensor] = []
        for block, past_key, past_value in zip(model.blocks, past[0::2], past[1::2],
                                               strict=True):
            y, key, value = torch.ops.gptmini.cached_attention(
                block.attn.c_attn(block.ln_1(x)), past_key, past_value, seqlens_k, total,
                model.n_head)
            x = x + block.attn.c_proj(y)
            x = x + block.mlp(block.ln_2(x))
            present += (key, value)
        return (model.lm_head(model.ln_f(x[:, -1])), *present)


def cached_step_program(model: GPT) -> torch.export.ExportedProgram:
    """CachedStep as a torch.export program: batch and number of new positions dynamic, the
    cache's length the context."""
    ids, ids_shape = example_prompt(model)
    shape = (ids.size(0), model.n_head, model.block_size, model.head_size)
    # Distinct tensors: torch.export would take one tensor passed twice for one input.
    past = tuple(torch.zeros(shape, dtype=model.wte.weight.dtype)
                 for _ in range(2 * model.n_layer))
    return export_program(CachedStep(model), (ids, torch.tensor(0), *past),
                          {"ids": ids_shape, "length": None,
                           "past": ({0: ids_shape[0]},) * len(past)})


def export_program(module: torch.nn.Module, example: tuple[torch.Tensor, ...],
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


def step_programs(model: GPT
                  ) -> tuple[torch.export.ExportedProgram, torch.export.ExportedProgram]:
    """The prefill and decode steps as torch.export programs: batch, prompt length and
    cache length dynamic."""
    ids, ids_shape = example_prompt(model)
    past = torch.export.Dim("past", min=1, max=model.block_size - 1)
    length = max(2, min(8, model.block_size - 1))
    shape, dtype = (2, model.n_head, length, model.head_size), model.wte.weight.dtype
    prefill = export_program(Prefill(model), (ids,), {"idx": ids_shape})
    cache = torch.zeros(model.n_layer, 2, *shape, dtype=dtype)
    # A contiguous example token: a program records its inputs' strides, and compiled
    # kernels (AOTInductor) index with them, so a slice's row stride would read wrong rows.
    decode = export_program(Decode(model), (ids[:, :1].contiguous(), cache),
                            {"next_id": {0: ids_shape[0]}, "cache": {2: ids_shape[0], 4: past}})
    return prefill, decode
