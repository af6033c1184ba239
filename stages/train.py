"""Stage train: train GPT-Mini on the token files, log the run to MLflow, save the checkpoint.

Resumes from data/train_state/ after a crash; runs on `train.processes` processes under
torchrun (DistributedDataParallel) when that is above 1.
"""

import contextlib
import json
import os
import sys

import mlflow
import torch

from gptmini import paths
from gptmini.atomic import write_json
from gptmini.checkpoint import save_checkpoint, weights_sha256
from gptmini.config import ConfigError, Params
from gptmini.model import GPT, GPTConfig
from gptmini.plots import loss_curve, write_csv
from gptmini.resume import ResumeStore, fingerprint
from gptmini.stage import StageError, run
from gptmini.tokens import load_tokens
from gptmini.tracking import MetricBuffer, flatten, mlflow_run, provenance_tags
from gptmini.train import (
    NonFiniteLoss,
    Trainer,
    init_distributed,
    pick_dtype,
    relaunch_with_torchrun,
    seed_everything,
)


def main(params: Params) -> None:
    cfg = params.train
    if cfg.processes > 1 and "LOCAL_RANK" not in os.environ:
        sys.exit(relaunch_with_torchrun(cfg.processes, __file__))
    dist_info, device = init_distributed(cfg.device)
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // dist_info.world_size))
    tokenizer = json.loads(paths.TOKENIZER_JSON.read_text())
    files = [paths.TOKENS_DIR / f"{s}.bin" for s in ("train", "val")]
    train_tokens, val_tokens = (load_tokens(f, tokenizer["dtype"]) for f in files)
    for split, tokens in (("train", train_tokens), ("val", val_tokens)):
        if len(tokens) <= params.model.block_size:
            raise ConfigError(f"params.yaml: model.block_size = {params.model.block_size}: "
                              f"must be < the {split} split's {len(tokens)} tokens")
    dtype = pick_dtype(cfg.dtype, device)
    seed_everything(cfg.seed)
    model_config = GPTConfig.from_model_config(params.model, tokenizer["vocab_size"])
    model = GPT(model_config)
    n_params = model.num_parameters()
    trainer = Trainer(model, train_tokens, val_tokens, cfg, device, dtype=dtype,
                      dist_info=dist_info)
    logged = {k: v for k, v in params.to_dict().items() if k != "evaluate"}
    store = ResumeStore(paths.RESUME_DIR, fingerprint({**logged, "tokenizer_def": tokenizer},
                                                       files), dist_info)
    saved = store.load()
    run_id = None
    if saved:
        trainer.load_state_dict(saved[0])
        run_id = saved[1]
        if dist_info.is_main:
            print(f"resuming from step {trainer.step} (saved in {paths.RESUME_DIR}/)")
    run_name = f"{tokenizer['kind']}-{tokenizer.get('encoding', 'chars')}"
    tags = {**provenance_tags(), "tokenizer": tokenizer["kind"], "data.sha256": params.data.sha256,
            "train.dtype": str(dtype).removeprefix("torch.")}
    if saved:
        tags["resumed_from_step"] = str(trainer.step)

    with (mlflow_run(run_id, run_name=run_name, tags=tags) if dist_info.is_main
          else contextlib.nullcontext()) as active:
        run_id = active.info.run_id if active else None
        buffer = MetricBuffer(run_id, every=10**9) if active else None
        if active and not saved:
            mlflow.log_params({**flatten(logged), "model.parameters": n_params,
                               "model.vocab_size": model_config.vocab_size,
                               "train.resolved_device": str(device),
                               "train.resolved_dtype": tags["train.dtype"]})

        def on_checkpoint(t: Trainer) -> None:
            if buffer:
                buffer.flush()  # metrics reach MLflow only up to a saved state: no duplicates
            store.save(t.state_dict(), run_id)

        try:
            result = trainer.run(
                on_step=buffer and (lambda r: buffer.add(
                    {k: v for k, v in r.items() if k != "step"}, int(r["step"]), "train_")),
                on_eval=buffer and (lambda r: buffer.add(
                    {"eval_train_loss": r["train_loss"], "val_loss": r["val_loss"]},
                    int(r["step"]))),
                on_checkpoint=on_checkpoint)
        except NonFiniteLoss as exc:
            kept = (f"the last good state (step {store.saved_step}) is kept in "
                    f"{paths.RESUME_DIR}/" if store.saved_step is not None
                    else "no state was saved yet")
            raise StageError(f"training stopped: {exc}; {kept}") from None
        sys.stderr.write(f"rank {dist_info.rank}/{dist_info.world_size}: weights sha256 "
                         f"{weights_sha256(model)}\n")  # one write: ranks share stderr
        if active:
            buffer.flush()
            save_checkpoint(paths.CHECKPOINT, model, trainer.optimizer, model_config, cfg,
                            tokenizer, result.steps)
            write_json(paths.RUN_JSON, {"run_id": run_id})
            write_csv(paths.TRAIN_LOG, result.history)
            write_csv(paths.EVAL_LOG, result.evals)
            loss_curve(paths.LOSS_CURVE, result.history, result.evals,
                       f"GPT-Mini ({run_name}, {n_params:,} parameters)")
            summary = {"steps": result.steps, "train_loss": result.final_train_loss,
                       "val_loss": result.final_val_loss, "best_val_loss": result.best_val_loss,
                       "best_step": result.best_step, "wall_seconds": result.wall_seconds,
                       "tokens_per_second": result.tokens_per_second, "parameters": n_params}
            write_json(paths.TRAIN_METRICS, summary)
            mlflow.log_metrics({"final_train_loss": result.final_train_loss,
                                "final_val_loss": result.final_val_loss,
                                "best_val_loss": result.best_val_loss,
                                "train_wall_seconds": result.wall_seconds,
                                "train_tokens_per_second": result.tokens_per_second})
            mlflow.log_artifact(str(paths.LOSS_CURVE))
    store.clear()
    if dist_info.world_size > 1:
        torch.distributed.destroy_process_group()
    if dist_info.is_main:
        print(f"trained {result.steps} steps in {result.wall_seconds:.0f} s on {device} "
              f"({tags['train.dtype']}): val loss {result.final_val_loss:.4f} "
              f"(best {result.best_val_loss:.4f} at step {result.best_step})")


if __name__ == "__main__":
    run(main)
