"""The train stage as one function: token files in, checkpoint, logs and one MLflow run out.

`train(params)` relaunches itself under torchrun when ``train.processes`` > 1, resumes
from ``data/train_state/`` after a crash (only a state made with the same params and
data), trains, and writes:

- ``data/model/ckpt.pt``: the final checkpoint (`gptmini.training.checkpoint`);
- ``metrics/train.json``, ``metrics/train_log.csv``, ``metrics/eval_log.csv`` and
  ``metrics/loss_curve.png``: what the run reached, byte-identical on every rerun with the
  same inputs;
- ``data/volatile/``: the MLflow run id (for the evaluate and export stages) and the
  timings, which differ between identical runs and so stay out of every DVC output.

The number of steps is what ``train.budget_chars`` buys at the train split's characters
per token (``data/tokens/counts.json``; `Params.train_steps`). The MLflow run gets the
params with the resolved ``train.steps`` and ``train.chars_per_token``, the per-step loss,
learning rate and tokens/s, the validation estimates, the summary and the timings, and
the loss curve.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any

import torch

from gptmini.core import numerics, paths
from gptmini.core.atomic import write_json
from gptmini.core.config import Params
from gptmini.core.device import (
    Distributed,
    init_distributed,
    pick_dtype,
    relaunch_with_torchrun,
    seed_everything,
)
from gptmini.core.hashing import weights_sha256
from gptmini.core.stage import Interrupted, StageError
from gptmini.data.tokens import SPLITS, load_tokens
from gptmini.model import GPT
from gptmini.tracking.metrics import MetricBuffer
from gptmini.tracking.run_id import write_run_id
from gptmini.tracking.runs import log_corpus, mlflow_run
from gptmini.tracking.tags import flatten, provenance_tags
from gptmini.training.checkpoint import save_checkpoint
from gptmini.training.logs import loss_curve, write_csv
from gptmini.training.resume import ResumeStore, fingerprint
from gptmini.training.trainer import NonFiniteLoss, Trainer, TrainResult


def train(params: Params) -> TrainResult | None:
    """Run the train stage (in this process, or as rank 0 of a torchrun job). Returns the
    result, or None in a process that only relaunched the job."""
    cfg = params.train
    if cfg.processes > 1 and "LOCAL_RANK" not in os.environ:
        code = relaunch_with_torchrun(cfg.processes, sys.argv[0])
        if code:
            raise SystemExit(code)
        return None
    dist_info, device = init_distributed(cfg.device)
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // dist_info.world_size))
    tokenizer = json.loads(paths.TOKENIZER_JSON.read_text())
    files = [paths.TOKENS_DIR / f"{split}.bin" for split in SPLITS]
    train_tokens, val_tokens = (load_tokens(f, tokenizer["dtype"]) for f in files)
    params.check_token_counts(len(train_tokens), len(val_tokens))
    counts = json.loads(paths.COUNTS_JSON.read_text())["train"]
    steps = params.train_steps(counts["chars"], counts["tokens"])
    dtype = pick_dtype(cfg.dtype, device)
    seed_everything(cfg.seed)
    model = GPT(params.model, tokenizer["vocab_size"])
    trainer = Trainer(model, train_tokens, val_tokens, cfg, device, steps=steps, dtype=dtype,
                      dist_info=dist_info)
    logged = {k: v for k, v in params.to_dict().items() if k != "evaluate"}
    store = ResumeStore(paths.RESUME_DIR, fingerprint({**logged, "tokenizer_def": tokenizer},
                                                       files), dist_info)
    saved = store.load()
    run_id = None
    if dist_info.is_main:
        print(f"train.budget_chars = {cfg.budget_chars:,} characters: {steps:,} steps of "
              f"{cfg.batch_size} x {dist_info.world_size} x {params.model.block_size} tokens "
              f"at {counts['chars'] / counts['tokens']:.4g} characters per token")
    if saved:
        trainer.load_state_dict(saved[0])
        run_id = saved[1]
        if dist_info.is_main:
            print(f"resuming from step {trainer.step} (saved in {paths.RESUME_DIR}/)")
    run_name = f"{tokenizer['kind']}-{tokenizer.get('encoding', 'chars')}"
    tags = {**provenance_tags(), **numerics.describe(), "tokenizer": tokenizer["kind"],
            "data.sha256": params.data.sha256,
            "train.dtype": str(dtype).removeprefix("torch.")}
    if saved:
        tags["resumed_from_step"] = str(trainer.step)

    # In MLflow a `dvc exp run -n NAME` run is called NAME, so a grid reads as its names
    with (mlflow_run(run_id, run_name=os.environ.get("DVC_EXP_NAME") or run_name, tags=tags,
                     system_metrics=True)
          if dist_info.is_main else contextlib.nullcontext()) as active:
        buffer = (MetricBuffer(active.info.run_id, every=10**9,
                               resume_metric="train_loss" if saved else None)
                  if active else None)
        if active and not saved:
            import mlflow

            mlflow.log_params({**flatten(logged), "model.parameters": model.num_parameters(),
                               "model.vocab_size": tokenizer["vocab_size"],
                               "train.steps": steps,
                               "train.chars_per_token": counts["chars"] / counts["tokens"],
                               "train.resolved_device": str(device),
                               "train.resolved_dtype": tags["train.dtype"]})
            log_corpus(params.data.url, params.data.sha256)
        result = _train_tracked(trainer, store, buffer, active.info.run_id if active else None)
        sys.stderr.write(f"rank {dist_info.rank}/{dist_info.world_size}: weights sha256 "
                         f"{weights_sha256(model)}\n")  # one write: ranks share stderr
        if active:
            buffer.flush()
            _write_outputs(params, model, tokenizer, result, run_name, buffer)
            write_run_id(active.info.run_id)
    store.clear()
    _finish(dist_info)
    if dist_info.is_main:
        print(f"trained {result.steps} steps in {result.wall_seconds:.0f} s on {device} "
              f"({tags['train.dtype']}): val loss {result.final_val_loss:.4f} "
              f"(best {result.best_val_loss:.4f} at step {result.best_step})")
    return result


def _train_tracked(trainer: Trainer, store: ResumeStore, buffer: MetricBuffer | None,
                   run_id: str | None) -> TrainResult:
    """Train, sending step metrics to MLflow only up to each saved state, so that a resumed
    run repeats none of them."""

    def on_step(row: dict[str, float]) -> None:
        buffer.add({k: v for k, v in row.items() if k != "step"}, int(row["step"]), "train_")

    def on_eval(row: dict[str, float]) -> None:
        buffer.add({"eval_train_loss": row["train_loss"], "val_loss": row["val_loss"]},
                   int(row["step"]))

    def on_checkpoint(t: Trainer) -> None:
        if buffer:
            buffer.flush()
        store.save(t.state_dict(), run_id)

    try:
        return trainer.run(on_step=on_step if buffer else None,
                           on_eval=on_eval if buffer else None, on_checkpoint=on_checkpoint)
    except NonFiniteLoss as exc:
        kept = (f"the last good state (step {store.saved_step}) is kept in {paths.RESUME_DIR}/"
                if store.saved_step is not None else "no state was saved yet")
        raise StageError(f"training stopped: {exc}; {kept}") from None
    except Interrupted as exc:
        raise Interrupted(f"{exc}; its state is saved in {paths.RESUME_DIR}/: rerun the stage "
                          "(dvc repro) to resume", exc.signum) from None


def _write_outputs(params: Params, model: GPT, tokenizer: dict[str, Any], result: TrainResult,
                   run_name: str, buffer: MetricBuffer) -> None:
    """The stage's outputs (deterministic) and the volatile timings; the same summary and
    timings go to MLflow (or wait in its outbox while the store is unreachable)."""
    n_params = model.num_parameters()
    save_checkpoint(paths.CHECKPOINT, model, params.model, tokenizer, result.steps)
    write_csv(paths.TRAIN_LOG, result.history)
    write_csv(paths.EVAL_LOG, result.evals)
    loss_curve(paths.LOSS_CURVE, result.history, result.evals,
               f"GPT-Mini ({run_name}, {n_params:,} parameters)")
    summary = {**result.summary(), "parameters": n_params}
    write_json(paths.TRAIN_METRICS, summary)
    write_json(paths.TIMINGS_JSON, {"train": result.timings()})
    buffer.add_summary({f"train.{k}": v for k, v in {**summary, **result.timings()}.items()})
    buffer.flush()
    buffer.log_artifact(paths.LOSS_CURVE)


def _finish(dist_info: Distributed) -> None:
    if dist_info.world_size > 1:
        torch.distributed.destroy_process_group()
