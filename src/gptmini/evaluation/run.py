"""The evaluate stage as one function: the checkpoint scored on the whole validation split.

Writes ``metrics/evaluate.json`` (NLL, perplexity, accuracy, BPC, nats per character, the
counts) and logs the same metrics and the ``evaluate`` params to the pipeline's MLflow run.
"""

from __future__ import annotations

import json

from gptmini.core import paths
from gptmini.core.atomic import write_json
from gptmini.core.config import Params
from gptmini.core.device import pick_device
from gptmini.data.tokenizers import from_definition
from gptmini.data.tokens import load_tokens
from gptmini.evaluation.metrics import evaluate_tokens
from gptmini.report import metrics_line
from gptmini.tracking.runs import pipeline_run
from gptmini.tracking.tags import flatten
from gptmini.training.checkpoint import load_checkpoint, model_from_checkpoint


def evaluate(params: Params) -> dict[str, float]:
    device = pick_device(params.evaluate.device, key="evaluate.device")
    definition = json.loads(paths.TOKENIZER_JSON.read_text())
    counts = json.loads(paths.COUNTS_JSON.read_text())
    val = load_tokens(paths.TOKENS_DIR / "val.bin", definition["dtype"])
    # Characters spelled by the predicted tokens: the whole split but the first token.
    n_chars = counts["val"]["chars"] - len(from_definition(definition).decode([int(val[0])]))
    model = model_from_checkpoint(load_checkpoint(paths.CHECKPOINT))
    metrics = evaluate_tokens(model, val, n_chars, batch_size=params.evaluate.batch_size,
                              device=device)
    write_json(paths.EVALUATE_METRICS, metrics)
    with pipeline_run("evaluate", flatten({"evaluate": params.to_dict()["evaluate"]})):
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    print(f"validation: {metrics_line(metrics)}")
    return metrics
