"""Where runs go: the tracking URI, the store's lock, and how long a request may take."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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
        with store_lock(uri):
            mlflow.MlflowClient(uri)  # makes (or finds) every table
        _READY.add(uri)
    return uri


_READY: set[str] = set()


def store_lock(uri: str) -> Any:
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
