"""MLflow tracking: where runs go, what each run is tagged with, and batched metric logging.

The default store is SQLite at ``<project root>/mlflow.db``, an absolute path, so that
``dvc exp run`` temporary workspaces log into the same store as the main checkout.
``MLFLOW_TRACKING_URI`` overrides it (e.g. a running ``mlflow server``).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gptmini.core import paths
from gptmini.core.atomic import write_json
from gptmini.core.env import project_root

EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "gptmini"


def default_tracking_uri() -> str:
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30,
                             cwd=Path.cwd())
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance_tags() -> dict[str, str]:
    """Git commit and dirtiness, the DVC experiment name, and library versions."""
    import dvc
    import mlflow
    import tiktoken
    import torch

    tags = {
        "git.commit": _git("rev-parse", "HEAD") or "unknown",
        "git.dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower(),
        "version.torch": torch.__version__,
        "version.mlflow": mlflow.__version__,
        "version.dvc": dvc.__version__,
        "version.tiktoken": getattr(tiktoken, "__version__", "unknown"),
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _experiment_id(uri: str) -> str:
    import mlflow

    name = os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # On the default store, artifacts go beside it (not into the cwd, which for a DVC
    # temp workspace is deleted afterwards); a server decides for itself.
    location = None
    if uri == default_tracking_uri():
        location = (project_root() / "mlartifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


@contextmanager
def mlflow_run(run_id: str | None = None, *, run_name: str | None = None,
               tags: dict[str, str] | None = None, system_metrics: bool = False
               ) -> Iterator[Any]:
    """Open (or reopen, by id) a run on the project's store. An exception inside
    marks the run FAILED; a normal exit marks it FINISHED. `system_metrics`: MLflow samples
    CPU, memory, disk and network (and GPU) into `system/*` metrics while the run is open
    (every 10 s; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL changes it)."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if run_id is not None:
        try:
            mlflow.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            run_id = None  # not in this store (e.g. another tracking URI): start a new run
    kwargs: dict[str, Any] = {"run_id": run_id} if run_id else {
        "experiment_id": _experiment_id(uri), "run_name": run_name}
    with mlflow.start_run(**kwargs, tags=tags, log_system_metrics=system_metrics) as run:
        yield run


def log_corpus(url: str, sha256: str, context: str = "training") -> None:
    """Record the corpus as the active run's input dataset (the UI's Datasets column): its
    URL as the source, its sha256 as the digest (cut to the 36 characters MLflow's stores
    allow; the whole hash is the input's `sha256` tag)."""
    import mlflow
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    name = url.rstrip("/").rsplit("/", 1)[-1] or "corpus"
    dataset = MetaDataset(HTTPDatasetSource(url), name=name, digest=sha256[:36])
    mlflow.log_input(dataset, context=context, tags={"sha256": sha256})


class MetricBuffer:
    """Collects step metrics and sends them in batches: one request per flush, not per value.

    `resume_metric`: when a resumed run continues, the metrics of steps up to the last one
    this metric already has in the run are not sent again. The train stage flushes right
    before it saves a resume state, so a crash between the two leaves MLflow ahead of the
    state; the resumed (bit-exact) steps would otherwise log those metrics twice."""

    def __init__(self, run_id: str, every: int = 200, resume_metric: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.client, self.run_id, self.every = MlflowClient(), run_id, every
        self.pending: list[Any] = []
        self.logged_through = -1
        if resume_metric is not None:
            history = self.client.get_metric_history(run_id, resume_metric)
            self.logged_through = max((m.step for m in history), default=-1)

    def add(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        from mlflow.entities import Metric

        if step <= self.logged_through:
            return
        now = int(time.time() * 1000)
        self.pending += [Metric(f"{prefix}{k}", float(v), now, step) for k, v in values.items()]
        if len(self.pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        # MLflow accepts at most 1000 metrics per batch request.
        while self.pending:
            chunk, self.pending = self.pending[:1000], self.pending[1000:]
            self.client.log_batch(self.run_id, metrics=chunk)


def read_run_id(run_json: str | Path = paths.RUN_JSON) -> str | None:
    """The run id the train stage left, or None when there is none to reopen."""
    import json

    try:
        return json.loads(Path(run_json).read_text())["run_id"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return None


def write_run_id(run_id: str, run_json: str | Path = paths.RUN_JSON) -> None:
    """Leave the run id for the later stages, outside every DVC output (it is random)."""
    write_json(run_json, {"run_id": run_id})


@contextmanager
def pipeline_run(stage: str, params: dict[str, Any] | None = None) -> Iterator[Any]:
    """Reopen the pipeline's MLflow run (the one the train stage left) for a later stage and
    log `params` to it; a new run when there is none in this store. MLflow never changes a
    logged param, so when `params` differ from the run's (e.g. `evaluate.batch_size` changed
    and only evaluate reruns), the stage gets a run of its own, tagged with the training run
    it continues, and the stages after it log there."""
    import mlflow

    run_id = read_run_id()
    tags = provenance_tags()
    if run_id is not None and params:
        mlflow.set_tracking_uri(tracking_uri())
        try:
            logged = mlflow.get_run(run_id).data.params
        except mlflow.exceptions.MlflowException:
            logged = {}
        if any(k in logged and logged[k] != str(v) for k, v in params.items()):
            tags = {**tags, "gptmini.train_run_id": run_id}
            run_id = None
    with mlflow_run(run_id, run_name=stage, tags=tags) as run:
        if params:
            mlflow.log_params(params)
        if run.info.run_id != run_id:  # a new run (none left, params clash, other store)
            write_run_id(run.info.run_id)
        yield run
