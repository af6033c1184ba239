"""Opening, reopening and ending MLflow runs: a stage's run, the pipeline's run."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gptmini.core.env import project_root
from gptmini.core.errors import first_line
from gptmini.tracking.outbox import Outbox, deliver_kept
from gptmini.tracking.run_id import read_run_id, write_run_id
from gptmini.tracking.store import (
    DEFAULT_EXPERIMENT,
    EXPERIMENT_ENV,
    bound_http_requests,
    connect,
    default_tracking_uri,
    store_lock,
    tracking_uri,
    unreachable_errors,
)
from gptmini.tracking.tags import provenance_tags


def _end_run(run_id: str, status: str) -> None:
    """End the active run with `status`; when the store cannot be told, the status waits in
    the outbox, after what the run still has there, and one line says how it gets there."""
    import mlflow

    outbox = Outbox()
    try:
        outbox.deliver()
        mlflow.end_run(status)
        return
    except unreachable_errors() as exc:
        reason = first_line(exc)
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        try:
            mlflow.end_run(status)  # leaves MLflow's active-run stack, then fails to tell
        except unreachable_errors():
            pass
    outbox.keep(run_id, status=status)
    print(f"MLflow: the tracking store {tracking_uri()} is unreachable ({reason}); the run's "
          f"remainder ({outbox.summary()}) is kept in {outbox.path}: `gptmini mlflow-sync` "
          "delivers it once the store is back", file=sys.stderr)


def _experiment_id(uri: str) -> str:
    """The id of the experiment runs go to, created on first use. Two processes may both
    find it missing: on SQLite the store's lock lets one create it; on a server, the one
    that loses the race reads the winner's."""
    import mlflow

    name = os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT
    try:
        experiment = mlflow.get_experiment_by_name(name)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):  # one line, no traceback
            from gptmini.core.stage import StageError

            raise StageError(f"the tracking server {uri} refused this login ({exc.error_code}):"
                             " check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
                             ) from None
        raise
    if experiment is not None:
        return experiment.experiment_id
    # On the default store, artifacts go beside it (not into the cwd, which for a DVC
    # temp workspace is deleted afterwards); a server decides for itself.
    location = None
    if uri == default_tracking_uri():
        location = (project_root() / "mlartifacts").as_uri()
    with store_lock(uri) if uri.startswith("sqlite:") else contextlib.nullcontext():
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            # a model-training experiment (MLflow 3.17's UI still opens on its GenAI view
            # unless the address asks otherwise: cli/runs.py's ui_url)
            return mlflow.create_experiment(name, artifact_location=location, tags={
                "mlflow.experimentKind": "custom_model_development"})
        except mlflow.exceptions.MlflowException:
            experiment = mlflow.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id


@contextmanager
def mlflow_run(run_id: str | None = None, *, run_name: str | None = None,
               tags: dict[str, str] | None = None, system_metrics: bool = False
               ) -> Iterator[Any]:
    """Open (or reopen, by id) a run on the project's store. An exception inside
    marks the run FAILED, Ctrl-C or SIGTERM (KeyboardInterrupt) KILLED; a normal exit
    marks it FINISHED. `system_metrics`: MLflow samples CPU, memory, disk and network (and
    GPU) into `system/*` metrics while the run is open (every 10 s;
    MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL changes it)."""
    import mlflow

    bound_http_requests()
    uri = connect()
    deliver_kept()
    if run_id is not None:
        try:
            mlflow.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            run_id = None  # not in this store (e.g. another tracking URI): start a new run
    kwargs: dict[str, Any] = {"run_id": run_id} if run_id else {
        "experiment_id": _experiment_id(uri), "run_name": run_name}
    with mlflow.start_run(**kwargs, tags=tags, log_system_metrics=system_metrics) as run:
        status = "FINISHED"
        try:
            yield run
        except KeyboardInterrupt:  # Ctrl-C, or a stage's `Interrupted` (SIGTERM too)
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            _end_run(run.info.run_id, status)


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
        connect()
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
