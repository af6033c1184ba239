"""MLflow tracking: where runs go, what each run is tagged with, and batched metric logging.

The default store is SQLite at ``<project root>/mlflow.db``, an absolute path, so that
``dvc exp run`` temporary workspaces log into the same store as the main checkout.
``MLFLOW_TRACKING_URI`` overrides it (e.g. a running ``mlflow server``).

A tracking server that dies mid-run costs a few seconds per request (`bound_http_requests`),
never the run: what it could not take (step metrics, artifacts, a run's final status) waits
in ``data/volatile/mlflow_outbox.json`` (`Outbox`) and is delivered by the next flush, the
next stage, or ``gptmini mlflow-sync``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
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
# MLflow's defaults retry a failed request for minutes (7 retries, backoff factor 2, 120 s
# timeout): a training run must not wait on a dead server. Set in the environment, they win.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def default_tracking_uri() -> str:
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def connect() -> str:
    """Point MLflow at the project's store and return its URI. A SQLite store's tables are
    created under a file lock: MLflow's tracking store creates and migrates them without
    one, so two processes opening a new store at once (``dvc queue start -j 2``) fail with
    "duplicate column name". Once per process and store."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:") and uri not in _READY:
        with _store_lock(uri):
            mlflow.MlflowClient(uri)  # makes (or finds) every table
        _READY.add(uri)
    return uri


_READY: set[str] = set()


def _store_lock(uri: str) -> Any:
    """A lock that the processes sharing a SQLite store agree on, kept outside the project
    (a file beside the store would show in ``git status``)."""
    import hashlib
    import tempfile

    from filelock import FileLock

    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return FileLock(Path(tempfile.gettempdir()) / f"gptmini-mlflow-{digest}.lock", timeout=300)


def bound_http_requests() -> None:
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


def unreachable_errors() -> tuple[type[BaseException], ...]:
    """What a request to a store that is down (or refusing) raises."""
    from mlflow.exceptions import MlflowException

    return (MlflowException, OSError)  # requests' errors are OSErrors


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return lines[0][:200]


class Outbox:
    """What the tracking store could not take, per run: step metrics (with their original
    timestamps, so that a resent batch the server did store is one MLflow's SQL store
    drops), artifacts, and the run's final status, in a JSON file written atomically.
    `deliver` sends it all, in that order, and forgets what arrived."""

    def __init__(self, path: str | Path = paths.MLFLOW_OUTBOX) -> None:
        self.path = Path(path)

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    def _write(self, runs: dict[str, Any]) -> None:
        if runs:
            write_json(self.path, runs)
        else:
            self.path.unlink(missing_ok=True)

    def keep(self, run_id: str, *, metrics: list[Any] = (), artifact: str | Path | None = None,
             status: str | None = None) -> None:
        runs = self._read()
        entry = runs.setdefault(run_id, {"tracking_uri": tracking_uri(), "metrics": [],
                                         "artifacts": [], "status": None})
        entry["metrics"] += [[m.key, m.value, m.timestamp, m.step] for m in metrics]
        if artifact is not None:
            entry["artifacts"].append(str(Path(artifact).resolve()))
        if status is not None:
            entry["status"] = status
        self._write(runs)

    def describe(self) -> str:
        runs = self._read()
        metrics = sum(len(e["metrics"]) for e in runs.values())
        artifacts = sum(len(e["artifacts"]) for e in runs.values())
        statuses = [f"run {r} {e['status']}" for r, e in runs.items() if e["status"]]
        return ", ".join([f"{metrics:,} metrics", f"{artifacts} artifacts", *statuses])

    def deliver(self) -> int:
        """Send everything kept; the number of metrics sent. A failure raises, and what did
        not arrive stays kept."""
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        runs, delivered = self._read(), 0
        try:
            for run_id, entry in list(runs.items()):
                client = MlflowClient(entry["tracking_uri"])
                while entry["metrics"]:
                    chunk = entry["metrics"][:1000]  # MLflow's limit per batch request
                    client.log_batch(run_id, metrics=[Metric(*m) for m in chunk])
                    entry["metrics"] = entry["metrics"][1000:]
                    delivered += len(chunk)
                while entry["artifacts"]:
                    client.log_artifact(run_id, entry["artifacts"][0])
                    entry["artifacts"].pop(0)
                if entry["status"]:
                    client.set_terminated(run_id, entry["status"])
                del runs[run_id]
        finally:
            if runs or self.path.exists():
                self._write(runs)
        return delivered


def deliver_kept() -> None:
    """At a run's start: deliver what an earlier stage could not (quietly left for later
    when the store is still unreachable)."""
    outbox = Outbox()
    if not outbox.path.exists():
        return
    try:
        delivered = outbox.deliver()
    except unreachable_errors():
        return
    print(f"MLflow: delivered {delivered:,} metrics kept in {outbox.path} while the tracking "
          "store was unreachable", file=sys.stderr)


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
          f"remainder ({outbox.describe()}) is kept in {outbox.path}: `gptmini mlflow-sync` "
          "delivers it once the store is back", file=sys.stderr)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30,
                             cwd=Path.cwd())
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance_tags() -> dict[str, str]:
    """Git commit and dirtiness, the DVC experiment name, the code this process imported
    (where from, and a hash of its sources), and library versions."""
    import dvc
    import mlflow
    import tiktoken
    import torch

    import gptmini
    from gptmini.core.hashing import source_sha256

    package = Path(gptmini.__file__).parent

    tags = {
        "git.commit": _git("rev-parse", "HEAD") or "unknown",
        "git.dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower(),
        "code.path": str(package),
        "code.src_sha256": source_sha256(package),
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
    with _store_lock(uri) if uri.startswith("sqlite:") else contextlib.nullcontext():
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            # a model-training experiment: MLflow 3's UI opens it on its training runs and
            # charts, not on the GenAI overview (traces) it shows an untagged one
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


class MetricBuffer:
    """Collects step metrics and sends them in batches: one request per flush, not per value.
    A flush the store cannot take moves the batch to the `Outbox` (so that neither a dead
    server nor a crash after it loses a metric); each later flush delivers the outbox first.

    `resume_metric`: when a resumed run continues, the metrics of steps up to the last one
    this metric already has in the run are not sent again. The train stage flushes right
    before it saves a resume state, so a crash between the two leaves MLflow ahead of the
    state; the resumed (bit-exact) steps would otherwise log those metrics twice."""

    def __init__(self, run_id: str, every: int = 200, resume_metric: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.client, self.run_id, self.every = MlflowClient(), run_id, every
        self.pending: list[Any] = []
        self.outbox, self.unreachable = Outbox(), False
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

    def add_summary(self, values: dict[str, float]) -> None:
        """Run-level values (step 0), sent even by a resumed run."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, 0) for k, v in values.items()]

    def flush(self) -> bool:
        """Send the outbox, then what is pending; False when the store could not take it
        (all of it is then in the outbox)."""
        if not self.pending and not self.outbox.path.exists():
            return True
        try:
            delivered = self.outbox.deliver()
            while self.pending:
                chunk = self.pending[:1000]  # MLflow's limit per batch request
                self.client.log_batch(self.run_id, metrics=chunk)
                self.pending = self.pending[1000:]
        except unreachable_errors() as exc:
            self.outbox.keep(self.run_id, metrics=self.pending)
            self.pending = []
            if not self.unreachable:
                print(f"MLflow: the tracking store {tracking_uri()} is unreachable "
                      f"({first_line(exc)}); training goes on, keeping the metrics in "
                      f"{self.outbox.path} until it is back", file=sys.stderr)
            self.unreachable = True
            return False
        if self.unreachable:
            print(f"MLflow: the tracking store is back: delivered the {delivered:,} metrics "
                  "kept while it was unreachable", file=sys.stderr)
            self.unreachable = False
        return True

    def log_artifact(self, path: str | Path) -> None:
        try:
            self.client.log_artifact(self.run_id, str(path))
        except unreachable_errors():
            self.outbox.keep(self.run_id, artifact=path)


def read_run_id(run_json: str | Path = paths.RUN_JSON) -> str | None:
    """The run id the train stage left, or None when there is none to reopen."""
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
