"""Stage train: train GPT-Mini on the token files, log the run to MLflow, save the checkpoint."""

import json

import mlflow

from gptmini import paths
from gptmini.atomic import write_json
from gptmini.checkpoint import save_checkpoint
from gptmini.config import ConfigError, Params
from gptmini.model import GPT, GPTConfig
from gptmini.plots import loss_curve, write_csv
from gptmini.stage import run
from gptmini.tokens import load_tokens
from gptmini.tracking import MetricBuffer, flatten, mlflow_run, provenance_tags
from gptmini.train import pick_device, seed_everything, train


def main(params: Params) -> None:
    tokenizer = json.loads(paths.TOKENIZER_JSON.read_text())
    splits = {s: load_tokens(paths.TOKENS_DIR / f"{s}.bin", tokenizer["dtype"])
              for s in ("train", "val")}
    for split, tokens in splits.items():
        if len(tokens) <= params.model.block_size:
            raise ConfigError(f"params.yaml: model.block_size = {params.model.block_size}: "
                              f"must be < the {split} split's {len(tokens)} tokens")
    device = pick_device(params.train.device)
    seed_everything(params.train.seed)
    model_config = GPTConfig.from_model_config(params.model, tokenizer["vocab_size"])
    model = GPT(model_config)
    n_params = model.num_parameters()
    run_name = f"{tokenizer['kind']}-{tokenizer.get('encoding', 'chars')}"

    with mlflow_run(run_name=run_name,
                    tags={**provenance_tags(), "tokenizer": tokenizer["kind"]}) as active:
        logged = {k: v for k, v in params.to_dict().items() if k != "evaluate"}
        mlflow.log_params({**flatten(logged), "model.parameters": n_params,
                           "model.vocab_size": model_config.vocab_size,
                           "train.resolved_device": str(device)})
        buffer = MetricBuffer(active.info.run_id)
        result, optimizer = train(
            model, splits["train"], splits["val"], params.train, device,
            on_step=lambda r: buffer.add({k: v for k, v in r.items() if k != "step"},
                                         int(r["step"]), prefix="train_"),
            on_eval=lambda r: buffer.add({"eval_train_loss": r["train_loss"],
                                          "val_loss": r["val_loss"]}, int(r["step"])))
        buffer.flush()

        save_checkpoint(paths.CHECKPOINT, model, optimizer, model_config, params.train,
                        tokenizer, result.steps)
        write_json(paths.RUN_JSON, {"run_id": active.info.run_id})
        write_csv(paths.TRAIN_LOG, result.history)
        write_csv(paths.EVAL_LOG, result.evals)
        loss_curve(paths.LOSS_CURVE, result.history, result.evals,
                   f"GPT-Mini ({run_name}, {n_params:,} parameters)")
        summary = {"steps": result.steps, "train_loss": result.final_train_loss,
                   "val_loss": result.final_val_loss, "wall_seconds": result.wall_seconds,
                   "tokens_per_second": result.tokens_per_second, "parameters": n_params}
        write_json(paths.TRAIN_METRICS, summary)
        mlflow.log_metrics({"final_train_loss": result.final_train_loss,
                            "final_val_loss": result.final_val_loss,
                            "train_wall_seconds": result.wall_seconds,
                            "train_tokens_per_second": result.tokens_per_second})
        mlflow.log_artifact(str(paths.LOSS_CURVE))
    print(f"trained {result.steps} steps in {result.wall_seconds:.0f} s on {device}: "
          f"val loss {result.final_val_loss:.4f}")


if __name__ == "__main__":
    run(main)
