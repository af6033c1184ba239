"""The evaluate stage as one function: the checkpoint scored on the whole validation split,
in non-overlapping windows (the headline) and in sliding windows, and on the whole
training split in non-overlapping windows.

Writes ``metrics/evaluate.json`` (NLL, perplexity, accuracy, BPC, nats per character, the
counts: the headline's bare, ``sliding_*`` and ``train_*`` for the others, as
`gptmini.report.PROTOCOLS` lists them) and logs the same metrics and the ``evaluate``
params to the pipeline's MLflow run.
"""

from __future__ import annotations

import json

import numpy as np

from gptmini.core import paths
from gptmini.core.atomic import write_json
from gptmini.core.config import Params
from gptmini.core.device import pick_device
from gptmini.data.tokenizers import Tokenizer, from_definition
from gptmini.data.tokens import load_tokens
from gptmini.evaluation.metrics import evaluate_tokens, sliding_stride
from gptmini.report import PROTOCOLS, metrics_line, protocol_metrics, with_prefix
from gptmini.tracking.runs import pipeline_run
from gptmini.tracking.tags import flatten
from gptmini.training.checkpoint import load_checkpoint, model_from_checkpoint


def _split(name: str, definition: dict, counts: dict, tokenizer: Tokenizer
           ) -> tuple[np.ndarray, int]:
    """The tokens of split `name` and the characters its predicted tokens spell: the whole
    split but the first token."""
    tokens = load_tokens(paths.TOKENS_DIR / f"{name}.bin", definition["dtype"])
    return tokens, counts[name]["chars"] - len(tokenizer.decode([int(tokens[0])]))


def evaluate(params: Params) -> dict[str, float]:
    device = pick_device(params.evaluate.device, key="evaluate.device")
    definition = json.loads(paths.TOKENIZER_JSON.read_text())
    counts = json.loads(paths.COUNTS_JSON.read_text())
    tokenizer = from_definition(definition)
    model = model_from_checkpoint(load_checkpoint(paths.CHECKPOINT))
    batch_size = params.evaluate.batch_size
    val, val_chars = _split("val", definition, counts, tokenizer)
    train, train_chars = _split("train", definition, counts, tokenizer)
    metrics = evaluate_tokens(model, val, val_chars, batch_size=batch_size, device=device)
    sliding = evaluate_tokens(model, val, val_chars, batch_size=batch_size, device=device,
                              stride=sliding_stride(model.block_size))
    on_train = evaluate_tokens(model, train, train_chars, batch_size=batch_size,
                               device=device)
    metrics = {**metrics, **with_prefix(sliding, "sliding_"), **with_prefix(on_train, "train_")}
    write_json(paths.EVALUATE_METRICS, metrics)
    with pipeline_run("evaluate", flatten({"evaluate": params.to_dict()["evaluate"]})):
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    for prefix, protocol in PROTOCOLS.items():
        print(f"{protocol}: {metrics_line(protocol_metrics(metrics, prefix))}")
    return metrics
