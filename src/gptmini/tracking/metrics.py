"""Step metrics sent in batches, kept in the outbox when the store cannot take them."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from gptmini.core.errors import first_line
from gptmini.tracking.outbox import Outbox, log_in_batches
from gptmini.tracking.store import tracking_uri, unreachable_errors


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
            log_in_batches(self.client, self.run_id, self.pending)
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


class NullBuffer:
    """MetricBuffer's interface doing nothing: the tracker of the processes that do not log
    (the ranks after the first of a multi-process run)."""

    run_id = None

    def add(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        pass

    def add_summary(self, values: dict[str, float]) -> None:
        pass

    def flush(self) -> bool:
        return True

    def log_artifact(self, path: str | Path) -> None:
        pass
