"""Stage evaluate: exact metrics over the whole validation split, logged to the training run."""

import json

import mlflow

from gptmini import paths
from gptmini.atomic import write_json
from gptmini.checkpoint import load_checkpoint, model_from_checkpoint
from gptmini.config import Params
from gptmini.evaluate import evaluate_tokens
from gptmini.stage import run
from gptmini.tokenizer import from_definition
from gptmini.tokens import load_tokens
from gptmini.tracking import flatten, mlflow_run, provenance_tags, read_run_id
from gptmini.train import pick_device


def main(params: Params) -> None:
    definition = json.loads(paths.TOKENIZER_JSON.read_text())
    counts = json.loads(paths.COUNTS_JSON.read_text())
    val = load_tokens(paths.TOKENS_DIR / "val.bin", definition["dtype"])
    # Characters spelled by the predicted tokens: the whole split but the first token.
    n_chars = counts["val"]["chars"] - len(from_definition(definition).decode([int(val[0])]))
    model = model_from_checkpoint(load_checkpoint(paths.CHECKPOINT))
    metrics = evaluate_tokens(model, val, n_chars, batch_size=params.evaluate.batch_size,
                              device=pick_device(params.evaluate.device))
    write_json(paths.EVALUATE_METRICS, metrics)
    with mlflow_run(read_run_id(paths.RUN_JSON), run_name="evaluate", tags=provenance_tags()):
        mlflow.log_params(flatten({"evaluate": params.to_dict()["evaluate"]}))
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    print(f"validation: nll {metrics['nll']:.4f} nats/token, perplexity "
          f"{metrics['perplexity']:.3f}, accuracy {metrics['accuracy']:.4f}, "
          f"bpc {metrics['bpc']:.4f}")


if __name__ == "__main__":
    run(main)
