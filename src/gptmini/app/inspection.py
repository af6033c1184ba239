"""What the model does with a prompt, for the app's Inspect tab: the attention weights of
every layer and head, and at each position the most likely next tokens.

It runs the eager model (`GPT.attention_maps`, which the export does not carry), rebuilt
from the export's weights by `LoadedExport.eager_model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gptmini.data.tokenizers import Tokenizer
from gptmini.model import GPT

MAX_TOKENS = 64  # the last tokens of a longer prompt: beyond that the maps are unreadable


@dataclass(frozen=True)
class Inspection:
    tokens: list[str]          # each position's token, as text
    maps: torch.Tensor         # attention weights (n_layer, n_head, T, T)
    top_ids: torch.Tensor      # (T, k): the k most likely next tokens at each position
    top_probs: torch.Tensor    # (T, k): their probabilities
    notices: list[str]


def inspect_ids(model: GPT, tokenizer: Tokenizer, ids: list[int], k: int) -> Inspection:
    """The attention maps and top-k next tokens of `ids`, at most MAX_TOKENS of them (the
    last ones; said in `notices`)."""
    notices = []
    limit = min(MAX_TOKENS, model.block_size)
    if len(ids) > limit:
        notices.append(f"the prompt is {len(ids):,} tokens: inspecting the last {limit}")
        ids = ids[-limit:]
    logits, maps = model.attention_maps(torch.tensor([ids]))
    probs = logits[0].float().softmax(dim=-1)
    top = probs.topk(min(k, probs.size(-1)), dim=-1)
    tokens = [tokenizer.decode([i]) for i in ids]
    return Inspection(tokens, maps[:, 0], top.indices, top.values, notices)


def shown(token: str) -> str:
    """A token as a label: whitespace made visible."""
    return repr(token)[1:-1].replace(" ", "␣") or "∅"


def candidates_frame(inspection: Inspection, tokenizer: Tokenizer) -> Any:
    """One row per position: the token there, then the k most likely next tokens with their
    probabilities, most likely first."""
    import pandas as pd

    rows = []
    for pos, token in enumerate(inspection.tokens):
        row: dict[str, Any] = {"position": pos, "token": shown(token)}
        pairs = zip(inspection.top_ids[pos].tolist(), inspection.top_probs[pos].tolist(),
                    strict=True)
        for rank, (i, p) in enumerate(pairs, start=1):
            row[f"#{rank}"] = f"{shown(tokenizer.decode([i]))}  {p:.3f}"
        rows.append(row)
    return pd.DataFrame(rows)


def attention_figure(inspection: Inspection) -> Any:
    """A matplotlib figure: one heat map per layer (rows) and head (columns), query
    positions down, key positions across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_layer, n_head, T, _ = inspection.maps.shape
    size = 2.2 if T <= 16 else 3.0
    fig, axes = plt.subplots(n_layer, n_head, figsize=(size * n_head + 0.8, size * n_layer),
                             squeeze=False, layout="constrained")
    labels = [shown(t) for t in inspection.tokens]
    for layer in range(n_layer):
        for head in range(n_head):
            ax = axes[layer][head]
            image = ax.imshow(inspection.maps[layer, head].numpy(), cmap="viridis", vmin=0,
                              vmax=1)
            ax.set_title(f"layer {layer + 1} · head {head + 1}", fontsize=8)
            if T <= 24:
                ax.set_xticks(range(T), labels, fontsize=6, rotation=90)
                ax.set_yticks(range(T), labels, fontsize=6)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    return fig
