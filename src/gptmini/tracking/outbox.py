"""What the tracking store could not take, kept on disk until it is back."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gptmini.core import paths
from gptmini.core.atomic import write_json
from gptmini.tracking.store import tracking_uri, unreachable_errors

BATCH_LIMIT = 1000  # MLflow's limit of metrics per batch request


def log_in_batches(client: Any, run_id: str, pending: list[Any],
                   as_metric: Callable[[Any], Any] | None = None) -> int:
    """Send `pending` in batches of MLflow's limit, removing each batch once it arrived (a
    failure leaves in `pending` what did not); the number of metrics sent."""
    sent = 0
    while pending:
        chunk = pending[:BATCH_LIMIT]
        client.log_batch(run_id, metrics=[as_metric(m) for m in chunk] if as_metric else chunk)
        del pending[:BATCH_LIMIT]
        sent += len(chunk)
    return sent


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

    def summary(self) -> str:
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
                delivered += log_in_batches(client, run_id, entry["metrics"],
                                            lambda m: Metric(*m))
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
