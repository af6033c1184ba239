"""How metrics and models are written for people: one format per quantity, used by the
evaluate stage, `gptmini evaluate` and `gptmini info`, the app and the export's README.

Pure functions of plain data (a metrics dict as `gptmini.evaluation.metrics.summarize`
returns it, an ``evaluation_metrics.json`` record): no torch, no gradio. A key that is
missing is left out, so partial or old records still print.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# metric key -> (label, number format, unit), in the order they are shown
METRICS: dict[str, tuple[str, str, str]] = {
    "nll": ("NLL", ".4f", "nats/token"),
    "perplexity": ("perplexity", ".4f", ""),
    "accuracy": ("accuracy", ".4f", ""),
    "bpc": ("BPC", ".4f", "bits/char"),
    "tokens": ("tokens predicted", ",d", ""),
    "chars": ("characters", ",d", ""),
}
QUALITY = ("nll", "perplexity", "accuracy", "bpc")  # the rest are counts

# metrics/evaluate.json holds one flat set of metrics per protocol: the headline's keys
# bare, each other protocol's with its prefix (`sliding_bpc`, `train_bpc`).
# prefix -> what the protocol scores, in the order shown
PROTOCOLS: dict[str, str] = {
    "": "validation",
    "sliding_": "validation, sliding windows",
    "train_": "training split",
}


def with_prefix(metrics: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """`metrics` (as `summarize` returns them) under protocol `prefix`'s keys."""
    return {f"{prefix}{key}": value for key, value in metrics.items()}


def protocol_metrics(metrics: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The metrics of protocol `prefix` out of an evaluate.json, under their bare keys
    ("": the headline's, which every formatter here reads from the whole file)."""
    others = [p for p in PROTOCOLS if p]
    return {key[len(prefix):]: value for key, value in metrics.items()
            if key.startswith(prefix) and (prefix or not key.startswith(tuple(others)))}


def format_number(key: str, value: Any) -> str:
    """`value` of metric `key` in its format, without the unit: 4 decimals for the
    metrics, thousands separators for the counts."""
    spec = METRICS[key][1]
    if spec == ",d":
        return f"{int(value):,}"
    return format(float(value), spec)


def metric_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value with its unit) for each metric present, in the order shown."""
    rows = []
    for key, (label, _, unit) in METRICS.items():
        if metrics.get(key) is not None:
            value = format_number(key, metrics[key])
            rows.append((label, f"{value} {unit}" if unit else value))
    return rows


def metrics_line(metrics: Mapping[str, Any]) -> str:
    """One line: ``NLL 1.5287 nats/token, perplexity 4.6122, accuracy 0.5460, BPC 2.2054
    bits/char (111,539 tokens predicted, 111,539 characters)``."""
    quality = {k: v for k, v in metrics.items() if k in QUALITY}
    counts = {k: v for k, v in metrics.items() if k not in QUALITY}
    line = ", ".join(f"{label} {value}" for label, value in metric_rows(quality))
    counted = ", ".join(f"{value} {label}" for label, value in metric_rows(counts))
    if counted:
        line = f"{line} ({counted})" if line else counted
    return line


def metrics_text(metrics: Mapping[str, Any], indent: str = "  ") -> str:
    """Aligned lines, a label column then the value, for a terminal."""
    rows = metric_rows(metrics)
    width = max((len(label) for label, _ in rows), default=0) + 2
    return "\n".join(f"{indent}{label:<{width}}{value}" for label, value in rows)


def metrics_markdown(metrics: Mapping[str, Any]) -> str:
    """A markdown table (metric | value); a sentence when there is nothing to show."""
    rows = metric_rows(metrics)
    if not rows:
        return "No metrics.\n"
    return "| metric | value |\n|---|---|\n" + "".join(
        f"| {label} | {value} |\n" for label, value in rows)


def describe_tokenizer(tokenizer: Mapping[str, Any]) -> str:
    """``char (65 characters)`` or ``BPE gpt2 (50,257 tokens)``, from a tokenizer
    definition (or the record's copy of it)."""
    kind, size = tokenizer.get("kind"), tokenizer.get("vocab_size")
    if kind == "char":
        return f"char ({size:,} characters)" if isinstance(size, int) else "char"
    if kind == "bpe":
        name = f"BPE {tokenizer.get('encoding', '?')}"
        return f"{name} ({size:,} tokens)" if isinstance(size, int) else name
    return str(kind or "unknown")


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "?"


def describe_model(record: Mapping[str, Any]) -> str:
    """One line from an ``evaluation_metrics.json`` record: ``6 layers, 4 heads, embedding
    128, context 256, 1,230,976 parameters, tokenizer char (65 characters), trained 2,000
    steps``."""
    model = record.get("model") or {}
    config = model.get("config") or {}
    parts = [f"{_count(config.get('n_layer'))} layers", f"{_count(config.get('n_head'))} heads",
             f"embedding {_count(config.get('n_embd'))}",
             f"context {_count(config.get('block_size'))}",
             f"{_count(model.get('parameters'))} parameters"]
    if record.get("tokenizer"):
        parts.append(f"tokenizer {describe_tokenizer(record['tokenizer'])}")
    parts.append(f"trained {_count(model.get('step'))} steps")
    return ", ".join(parts)
