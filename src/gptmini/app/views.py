"""What the app shows, rendered from results: the generation statistics, the text coloured by
surprise, the training-loss table and the model's description. No Gradio here: the page
(gptmini.app.page) puts these into its components."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from gptmini.export.layout import EVAL_LOG_FILE, TRAIN_LOG_FILE
from gptmini.report import describe_model, metrics_line, metrics_markdown

if TYPE_CHECKING:
    from gptmini.inference.loading import LoadedExport

# Surprise in bits -> background colour (pale yellow to dark red), white text from 5 bits.
_STOPS = [(0.0, (255, 253, 231)), (2.0, (255, 224, 130)), (4.0, (255, 167, 38)),
          (6.0, (229, 57, 53)), (8.0, (127, 0, 0))]


def stats_markdown(n_chars: int, seconds: float, seed: int, notices: list[str], done: bool) -> str:
    speed = n_chars / seconds if seconds > 0 else 0.0
    state = "done" if done else "generating…"
    line = (f"**{n_chars:,} characters** in {seconds:.2f} s · **{speed:,.0f} chars/s** · "
            f"seed {seed} · {state}")
    return "\n\n".join([line, *(f"Note: {html.escape(n)}" for n in notices)])


def surprise_colour(bits: float) -> str:
    bits = min(max(bits, 0.0), _STOPS[-1][0])
    for (b0, c0), (b1, c1) in zip(_STOPS, _STOPS[1:], strict=False):
        if bits <= b1:
            f = (bits - b0) / (b1 - b0)
            return "#" + "".join(f"{round(a + f * (b - a)):02x}" for a, b in zip(c0, c1,
                                                                                  strict=True))
    return "#7f0000"


def _escape(text: str) -> str:
    # Braces and dollars too: the HTML component fills a template with the value.
    return (html.escape(text).replace("$", "&#36;").replace("{", "&#123;")
            .replace("}", "&#125;"))


def surprise_html(pieces: list[tuple[str, float | None]]) -> str:
    """The text as spans coloured by each token's surprise in bits, with a legend."""
    spans = []
    for text, bits in pieces:
        shown = text.replace("\n", "↵\n")
        if bits is None:
            spans.append(f'<span title="context">{_escape(shown)}</span>')
            continue
        fg = "#fff" if bits >= 5 else "#000"
        spans.append(f'<span style="background:{surprise_colour(bits)};color:{fg}" '
                     f'title="{_escape(repr(text))}: {bits:.2f} bits">{_escape(shown)}</span>')
    legend = "".join(
        f'<span style="background:{surprise_colour(b)};color:{"#fff" if b >= 5 else "#000"};'
        f'padding:0 0.5em">{b}{"+" if b == 8 else ""}</span>' for b in range(0, 9))
    return ('<div class="surprise">'
            f'<div style="margin-bottom:0.5em">surprise, bits per token: {legend}</div>'
            '<div style="font-family:ui-monospace,monospace;white-space:pre-wrap;'
            'line-height:1.5;color:#000;background:#fff;padding:0.5em;border-radius:4px">'
            f'{"".join(spans)}</div></div>')


def loss_frame(exported: LoadedExport) -> Any:
    """The training logs as one long table (step, loss, series), or None without logs."""
    import pandas as pd

    parts = []
    train_log = exported.directory / TRAIN_LOG_FILE
    eval_log = exported.directory / EVAL_LOG_FILE
    try:
        if train_log.is_file():
            rows = pd.read_csv(train_log)
            parts.append(pd.DataFrame({"step": rows["step"], "loss": rows["loss"],
                                       "series": "train (batch)"}))
        if eval_log.is_file():
            rows = pd.read_csv(eval_log)
            for column, name in (("train_loss", "train (estimate)"),
                                 ("val_loss", "validation (estimate)")):
                parts.append(pd.DataFrame({"step": rows["step"], "loss": rows[column],
                                           "series": name}))
    except (KeyError, ValueError, pd.errors.ParserError):
        return None
    return pd.concat(parts, ignore_index=True) if parts else None


def model_markdown(exported: LoadedExport) -> str:
    return f"{describe_model(exported.record)} · export `{exported.directory}`"


def validation_markdown(exported: LoadedExport) -> str:
    metrics = exported.record.get("metrics") or {}
    if not metrics_line(metrics):
        return "No validation metrics in this export."
    return f"### Validation\n\n{metrics_markdown(metrics)}"
