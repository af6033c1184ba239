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

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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
from gptmini.tracking.metrics import MetricBuffer, NullBuffer
from gptmini.tracking.run_id import write_run_id
from gptmini.tracking.runs import log_corpus, mlflow_run
from gptmini.tracking.tags import flatten, provenance_tags
from gptmini.training.checkpoint import save_checkpoint
from gptmini.training.logs import loss_curve, write_csv
from gptmini.training.resume import ResumeStore, SavedState, fingerprint
from gptmini.training.trainer import NonFiniteLoss, Trainer, TrainResult


@dataclass(frozen=True)
class TrainData:
    """What the tokenize stage left: the tokenizer, the token files and their tokens, and
    the train split's characters and tokens (which set the number of steps)."""

    tokenizer: dict[str, Any]
    files: list[Path]
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    chars: int
    tokens: int

    @property
    def chars_per_token(self) -> float:
        return self.chars / self.tokens

    @property
    def run_name(self) -> str:
        return f"{self.tokenizer['kind']}-{self.tokenizer.get('encoding', 'chars')}"


def train(params: Params) -> TrainResult | None:
    """Run the train stage (in this process, or as rank 0 of a torchrun job). Returns the
    result, or None in a process that only relaunched the job."""
    _run_on_native_kernels(params.train.kernels)
    if _relaunch(params.train.processes):
        return None
    dist_info, device = init_distributed(params.train.device)
    _set_threads(params.train.threads, dist_info)
    data = _load_data(params)
    trainer = _trainer(params, data, device, dist_info)
    store = ResumeStore(paths.RESUME_DIR, _fingerprint(params, data), dist_info)
    saved = store.load()
    if dist_info.is_main:
        _print_budget(params, data, trainer.steps, dist_info)
    _resume(trainer, saved, dist_info)
    with _tracker(params, data, trainer, saved, dist_info) as tracker:
        result = _train_tracked(trainer, store, tracker)
        sys.stderr.write(f"rank {dist_info.rank}/{dist_info.world_size}: weights sha256 "
                         f"{weights_sha256(trainer.model)}\n")  # one write: ranks share stderr
        if dist_info.is_main:
            tracker.flush()
            _write_outputs(params, trainer.model, data.tokenizer, result, data.run_name,
                           tracker)
            write_run_id(tracker.run_id)
    store.clear()
    _finish(dist_info)
    if dist_info.is_main:
        print(f"trained {result.steps} steps in {result.wall_seconds:.0f} s on {device} "
              f"({_dtype_name(trainer)}): val loss {result.final_val_loss:.4f} "
              f"(best {result.best_val_loss:.4f} at step {result.best_step})")
    return result


def _run_on_native_kernels(kernels: str) -> None:
    """`train.kernels: native`: this stage again, in this process (os.execve), without the
    kernel pins that `import gptmini` set (they must be in place before torch computes)."""
    if kernels == "native" and numerics.kernels() != "native":
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  numerics.native_kernels_env(dict(os.environ)))


def _relaunch(processes: int) -> bool:
    """Run this stage under torchrun when it asks for several processes and is not one of
    them yet; True when it did (this process then has nothing left to do)."""
    if processes <= 1 or "LOCAL_RANK" in os.environ:
        return False
    code = relaunch_with_torchrun(processes, sys.argv[0])
    if code:
        raise SystemExit(code)
    return True


def _set_threads(threads: int | None, dist_info: Distributed) -> None:
    # By default the processes of one machine share its cores.
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // dist_info.world_size))


def _load_data(params: Params) -> TrainData:
    tokenizer = json.loads(paths.TOKENIZER_JSON.read_text())
    files = [paths.TOKENS_DIR / f"{split}.bin" for split in SPLITS]
    train_tokens, val_tokens = (load_tokens(f, tokenizer["dtype"]) for f in files)
    params.check_token_counts(len(train_tokens), len(val_tokens))
    counts = json.loads(paths.COUNTS_JSON.read_text())["train"]
    return TrainData(tokenizer, files, train_tokens, val_tokens, counts["chars"],
                     counts["tokens"])


def _trainer(params: Params, data: TrainData, device: torch.device,
             dist_info: Distributed) -> Trainer:
    """A freshly seeded model and its trainer, for the steps the character budget buys."""
    steps = params.train_steps(data.chars, data.tokens)
    dtype = pick_dtype(params.train.dtype, device)
    seed_everything(params.train.seed)
    model = GPT(params.model, data.tokenizer["vocab_size"])
    return Trainer(model, data.train_tokens, data.val_tokens, params.train, device,
                   steps=steps, dtype=dtype, dist_info=dist_info)


def _fingerprint(params: Params, data: TrainData) -> str:
    return fingerprint({**params.recipe(), "tokenizer_def": data.tokenizer}, data.files)


def _print_budget(params: Params, data: TrainData, steps: int, dist_info: Distributed) -> None:
    print(f"train.budget_chars = {params.train.budget_chars:,} characters: {steps:,} steps "
          f"of {params.train.batch_size} x {dist_info.world_size} x "
          f"{params.model.block_size} tokens at {data.chars_per_token:.4g} characters "
          "per token")


def _resume(trainer: Trainer, saved: SavedState | None, dist_info: Distributed) -> None:
    if saved is None:
        return
    trainer.load_state_dict(saved.state)
    if dist_info.is_main:
        print(f"resuming from step {trainer.step} (saved in {paths.RESUME_DIR}/)")


def _dtype_name(trainer: Trainer) -> str:
    return str(trainer.dtype).removeprefix("torch.")


def _run_tags(params: Params, data: TrainData, trainer: Trainer,
              saved: SavedState | None) -> dict[str, str]:
    tags = {**provenance_tags(), **numerics.kernel_tags(), "tokenizer": data.tokenizer["kind"],
            "data.sha256": params.data.sha256, "train.dtype": _dtype_name(trainer)}
    if saved:
        tags["resumed_from_step"] = str(trainer.step)
    return tags


def _log_new_run(params: Params, data: TrainData, trainer: Trainer) -> None:
    """A new run's params (with what they resolved to) and its input dataset."""
    import mlflow

    mlflow.log_params({**flatten(params.recipe()),
                       "model.parameters": trainer.model.num_parameters(),
                       "model.vocab_size": data.tokenizer["vocab_size"],
                       "train.steps": trainer.steps,
                       "train.chars_per_token": data.chars_per_token,
                       "train.resolved_device": str(trainer.device),
                       "train.resolved_dtype": _dtype_name(trainer)})
    log_corpus(params.data.url, params.data.sha256)


@contextmanager
def _tracker(params: Params, data: TrainData, trainer: Trainer, saved: SavedState | None,
             dist_info: Distributed) -> Iterator[MetricBuffer | NullBuffer]:
    """The main process's MLflow run (a resumed run's own, else a new one), as the buffer
    its metrics go through; the other processes log nothing."""
    if not dist_info.is_main:
        yield NullBuffer()
        return
    tags = _run_tags(params, data, trainer, saved)
    # In MLflow a `dvc exp run -n NAME` run is called NAME, so a grid reads as its names
    with mlflow_run(saved.run_id if saved else None,
                    run_name=os.environ.get("DVC_EXP_NAME") or data.run_name, tags=tags,
                    system_metrics=True) as active:
        buffer = MetricBuffer(active.info.run_id, every=10**9,
                              resume_metric="train_loss" if saved else None)
        if not saved:
            _log_new_run(params, data, trainer)
        yield buffer


def _train_tracked(trainer: Trainer, store: ResumeStore,
                   tracker: MetricBuffer | NullBuffer) -> TrainResult:
    """Train, sending step metrics to MLflow only up to each saved state, so that a resumed
    run repeats none of them."""

    def on_step(row: dict[str, float]) -> None:
        tracker.add({k: v for k, v in row.items() if k != "step"}, int(row["step"]), "train_")

    def on_eval(row: dict[str, float]) -> None:
        tracker.add({"eval_train_loss": row["train_loss"], "val_loss": row["val_loss"]},
                    int(row["step"]))

    def on_checkpoint(t: Trainer) -> None:
        tracker.flush()
        store.save(t.state_dict(), tracker.run_id)

    try:
        return trainer.run(on_step=on_step, on_eval=on_eval, on_checkpoint=on_checkpoint)
    except NonFiniteLoss as exc:
        kept = (f"the last good state (step {store.saved_step}) is kept in {paths.RESUME_DIR}/"
                if store.saved_step is not None else "no state was saved yet")
        raise StageError(f"training stopped: {exc}; {kept}") from None
    except Interrupted as exc:
        raise Interrupted(f"{exc}; its state is saved in {paths.RESUME_DIR}/: rerun the stage "
                          "(dvc repro) to resume", exc.signum) from None


def _write_outputs(params: Params, model: GPT, tokenizer: dict[str, Any], result: TrainResult,
                   run_name: str, buffer: MetricBuffer | NullBuffer) -> None:
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
