"""The GPT-Mini web app (Gradio) on an export directory.

Generate: sampling settings and a stop string, the text streams in as it is made (pushed
to the page every UPDATE_SECONDS, not once per token), with its speed; Stop cancels it.
Evaluate: NLL, perplexity, accuracy and BPC of pasted text, and the text coloured by how
surprised the model was by each token. Inspect: the attention maps of every layer and head
for a prompt, and the most likely next tokens at each position. Model:
evaluation_metrics.json, the parameter count and the training loss curve. Generate,
Evaluate and Inspect share one limit of CONCURRENCY requests computed at once.

``gptmini app`` (or ``python -m gptmini.cli app``) serves it on
http://127.0.0.1:7860; other hosts only with ``--host``. Anything a user types that the
model cannot take is a short message in the page (and for API clients), never a traceback,
and the app keeps serving.
"""

from __future__ import annotations

import html
import sys
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import gradio as gr
import torch

from gptmini.app.inspection import attention_figure, candidates_frame, inspect_ids
from gptmini.app.views import (
    loss_frame,
    model_markdown,
    stats_markdown,
    surprise_html,
    validation_markdown,
)
from gptmini.data.text import InputError
from gptmini.evaluation.metrics import encode_text, surprise
from gptmini.inference.generation import (
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    Sampling,
    generate_text,
    prepare_prompt,
)
from gptmini.inference.loading import LoadedExport
from gptmini.report import metrics_markdown

MAX_EVAL_CHARS = 10_000     # the coloured picture has one element per token
UPDATE_SECONDS = 0.05       # how often streamed text is pushed to the page
CONCURRENCY = 2             # requests computed at once, all tabs together (one thread each)
MODEL_QUEUE = "model"       # the concurrency group every event that runs the model is in
QUEUE_SIZE = 256            # requests waiting beyond that; more are turned away
DEFAULT = Sampling()        # the fields' starting values
# Every event that runs the model: all tabs together share one limit of CONCURRENCY.
MODEL_EVENTS = {"concurrency_id": MODEL_QUEUE, "concurrency_limit": CONCURRENCY}

def _is_negative(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value < 0



def _user_error(exc: Exception) -> gr.Error:
    # gr.Error renders its message as HTML: escape what may echo the user's input.
    return gr.Error(html.escape(str(exc), quote=False), print_exception=False)


def generate(exported: LoadedExport, prompt: str, temperature: float, top_k: int,
             top_p: float, length: int, seed: int | None, stop: str | None = None
             ) -> Iterator[tuple[str, str]]:
    """The Generate tab: the text so far and its statistics, every UPDATE_SECONDS."""
    try:
        started = generate_text(exported, prompt, max_tokens=MAX_NEW_TOKENS, length=length,
                                temperature=temperature, top_k=top_k, top_p=top_p,
                                seed=None if _is_negative(seed) else seed,  # -1: random
                                stop=stop or None)
    except InputError as exc:
        raise _user_error(exc) from None
    seed, notices = started.sampling.seed, started.prompt.notices
    text, n_chars = started.prompt.text, 0
    start = last = time.perf_counter()
    for piece in started.pieces:
        text += piece
        n_chars += len(piece)
        now = time.perf_counter()
        if now - last >= UPDATE_SECONDS:
            last = now
            yield text, stats_markdown(n_chars, now - start, seed, notices, False)
    yield text, stats_markdown(n_chars, time.perf_counter() - start, seed, notices, True)


def evaluate(exported: LoadedExport, text: str) -> tuple[str, str, dict[str, float]]:
    """The Evaluate tab: the metrics table, the surprise picture and the metrics."""
    try:
        text = text or ""
        if len(text) > MAX_EVAL_CHARS:
            raise InputError(f"the text is {len(text):,} characters: at most "
                             f"{MAX_EVAL_CHARS:,} here (`gptmini evaluate FILE` takes "
                             "any length)")
        encoded = encode_text(text, exported.tokenizer)
    except InputError as exc:
        raise _user_error(exc) from None
    scored = surprise(exported.model, exported.tokenizer, encoded)
    return metrics_markdown(scored.metrics), surprise_html(scored.pieces), scored.metrics


def inspect(exported: LoadedExport, prompt: str, k: int) -> tuple[Any, Any, str]:
    """The Inspect tab: the attention maps, the next-token candidates and the notes."""
    try:
        if not isinstance(k, int | float) or k != int(k) or not 1 <= k <= 20:
            raise InputError(f"top-k = {k!r}: must be a whole number from 1 to 20")
        checked = prepare_prompt(prompt, exported.tokenizer, exported.block_size)
    except InputError as exc:
        raise _user_error(exc) from None
    seen = inspect_ids(exported.eager_model, exported.tokenizer, checked.ids, int(k))
    notes = [*checked.notices, *seen.notices]
    import matplotlib.pyplot as plt

    figure = attention_figure(seen)
    plt.close(figure)  # Gradio renders it; pyplot need not keep it
    return (figure, candidates_frame(seen, exported.tokenizer),
            "\n\n".join(f"Note: {html.escape(n)}" for n in notes))




def generate_tab(exported: LoadedExport) -> None:
    vocab_size = exported.tokenizer.vocab_size
    prompt = gr.Textbox(label="Prompt", value="ROMEO:", lines=3, max_length=MAX_PROMPT_CHARS,
                        elem_id="prompt")
    # Plain number fields, not sliders: out-of-range values then reach
    # Sampling.from_user, whose messages name the setting and what it allows.
    with gr.Row():
        temperature = gr.Number(value=DEFAULT.temperature, step=0.05, label="Temperature",
                                info=">= 0; 0 is greedy")
        top_k = gr.Number(value=vocab_size, step=1, precision=0, label="Top-k",
                          info=f"1 to {vocab_size:,} (all)")
        top_p = gr.Number(value=DEFAULT.top_p, step=0.05, label="Top-p",
                          info="in (0, 1]; 1 is off")
        length = gr.Number(value=DEFAULT.max_new_tokens, step=50, precision=0, label="Length",
                           info=f"tokens, 1 to {MAX_NEW_TOKENS:,}")
        seed = gr.Number(value=1337, precision=0, label="Seed", info="-1: random")
    stop = gr.Textbox(label="Stop at", placeholder="e.g. \\n\\n (optional)",
                      info="generation ends before this text (not shown)", max_length=1000,
                      elem_id="stop")
    with gr.Row():
        run = gr.Button("Generate", variant="primary", elem_id="generate-button")
        halt = gr.Button("Stop", variant="stop", elem_id="stop-button")
    output = gr.Textbox(label="Text", lines=14, max_lines=30, interactive=False,
                        autoscroll=True, elem_id="output")
    stats = gr.Markdown(elem_id="stats")
    running = run.click(partial(generate, exported),
                        [prompt, temperature, top_k, top_p, length, seed, stop],
                        [output, stats], api_name="generate", **MODEL_EVENTS)
    halt.click(None, None, None, cancels=[running])


def evaluate_tab(exported: LoadedExport) -> None:
    text = gr.Textbox(label=f"Text to evaluate (up to {MAX_EVAL_CHARS:,} characters)",
                      lines=8, max_length=MAX_EVAL_CHARS, elem_id="eval-text",
                      value="ROMEO:\nBut soft, what light through yonder window "
                            "breaks?\nIt is the east, and Juliet is the sun.\n")
    score_button = gr.Button("Evaluate", variant="primary", elem_id="evaluate-button")
    metrics_table = gr.Markdown(elem_id="metrics")
    picture = gr.HTML(elem_id="surprise")
    with gr.Accordion("metrics as JSON", open=False):
        metrics_json = gr.JSON()
    score_button.click(partial(evaluate, exported), [text],
                       [metrics_table, picture, metrics_json], api_name="evaluate",
                       **MODEL_EVENTS)


def inspect_tab(exported: LoadedExport) -> None:
    gr.Markdown("What the model does with a prompt: the attention weights of every "
                "layer (rows) and head (columns), each row of a map the positions "
                "one token attends to; and at each position the most likely next "
                "tokens with their probabilities.")
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", value="ROMEO:\nO Juliet", lines=2,
                            max_length=MAX_PROMPT_CHARS, scale=4, elem_id="inspect-prompt")
        k = gr.Number(value=5, precision=0, label="Top-k", info="1 to 20", scale=1)
    inspect_button = gr.Button("Inspect", variant="primary", elem_id="inspect-button")
    notes = gr.Markdown(elem_id="inspect-notes")
    attention_plot = gr.Plot(label="Attention", elem_id="attention")
    candidates = gr.Dataframe(label="Next-token candidates", wrap=True, elem_id="candidates")
    inspect_button.click(partial(inspect, exported), [prompt, k],
                         [attention_plot, candidates, notes], api_name="inspect",
                         **MODEL_EVENTS)


def model_tab(exported: LoadedExport) -> None:
    gr.Markdown(f"{model_markdown(exported)}\n\n{validation_markdown(exported)}")
    frame = loss_frame(exported)
    if frame is None:
        gr.Markdown("This export has no training log (`train_log.csv`, "
                    "`eval_log.csv`): run the export stage again to include it.")
    else:
        gr.LinePlot(frame, x="step", y="loss", color="series", title="Training loss",
                    y_title="loss (nats per token)", height=360)
    gr.JSON(exported.record, label="evaluation_metrics.json")


TABS = (("Generate", generate_tab), ("Evaluate", evaluate_tab), ("Inspect", inspect_tab),
        ("Model", model_tab))


def build_app(exported: LoadedExport) -> gr.Blocks:
    with gr.Blocks(title="GPT-Mini", analytics_enabled=False) as demo:
        gr.Markdown(f"# GPT-Mini\n{model_markdown(exported)}")
        for name, tab in TABS:
            with gr.Tab(name, id=name.lower()):
                tab(exported)
    return demo


def serve(exported: LoadedExport, host: str = "127.0.0.1", port: int = 7860,
          threads: int = 1) -> None:
    """Serve the app until interrupted. One torch thread per request by default: decoding
    one token is too small a job to split, and requests run side by side."""
    torch.set_num_threads(threads)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host}: anyone who can reach this machine can use the "
              "app", file=sys.stderr)
    demo = build_app(exported)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    # The app takes no files: uploads (which Gradio accepts by default) are capped small.
    demo.launch(server_name=host, server_port=port, show_error=False, ssr_mode=False,
                enable_monitoring=False, mcp_server=False, footer_links=["api"],
                max_file_size="1mb")

