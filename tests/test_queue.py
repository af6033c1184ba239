"""Parallel experiments: `dvc exp run --queue` and `dvc queue start -j 2` against the one
SQLite MLflow store of the checkout, on the real pipeline of a throwaway project; each
experiment runs the code it was queued with, whatever the workspace holds meanwhile."""

from __future__ import annotations

import time

import mlflow
import pytest

from gptmini.core.hashing import source_sha256
from helpers import make_corpus
from pipeline_project import PipelineProject

pytestmark = pytest.mark.slow
RATES = ("1e-3", "2e-3", "3e-3", "4e-3")


def _mark_the_train_code(project: PipelineProject, mark: str) -> None:
    """Make the train stage's module print `mark` when it is imported."""
    path = project.root / "src" / "gptmini" / "training" / "stage.py"
    text = path.read_text().split("\nprint('code:", 1)[0]
    path.write_text(f"{text}\nprint('code: {mark}', flush=True)\n")


def test_four_queued_experiments_on_two_workers_run_their_own_code_into_one_store(
        tmp_path_factory):
    corpus = tmp_path_factory.mktemp("mirror") / "input.txt"
    corpus.write_text(make_corpus(600, seed=5))
    project = PipelineProject(tmp_path_factory.mktemp("queue"), corpus)
    params = project.params
    # 20 steps each, one thread per worker: two workers share the cores.
    params["train"].update(budget_chars=20 * 8 * 32, threads=1, eval_interval=10)
    project.write_params(params)
    _mark_the_train_code(project, "as queued")
    project.run("git", "commit", "-qam", "tiny grid")
    queued_code = source_sha256(project.root / "src" / "gptmini")
    for rate in RATES:
        _queue(project, rate)
    # The workspace moves on while the queue runs (as it does during a grid); no PYTHONPATH
    # from the harness: dvc.yaml's commands alone must make each experiment import its own.
    _mark_the_train_code(project, "changed after queueing")
    assert "PYTHONPATH" not in project.env
    logs = _run_the_queue(project, 2, tmp_path_factory)
    raced = [rate for rate in RATES if logs[rate][0] == "Failed"]
    for rate in raced:
        # DVC's parallel workers race on git's refs and fail a task now and then, often with
        # no log (treeverse/dvc#10673). Such a task must show no failure of this project's
        # code; it is queued again, with the same code, and run on one worker.
        assert not _our_failure(logs[rate][1]), logs[rate][1][-6000:]
        print(f"lr-{rate} failed in DVC's worker race; log: {logs[rate][1][-2000:]!r}")
        project.run("dvc", "queue", "remove", f"lr-{rate}", check=False)
        _mark_the_train_code(project, "as queued")
        _queue(project, rate)
        _mark_the_train_code(project, "changed after queueing")
    if raced:
        logs.update(_run_the_queue(project, 1, tmp_path_factory, raced))
    assert [logs[rate][0] for rate in RATES] == ["Success"] * 4, logs
    text = "\n".join(log for _, log in logs.values())
    assert "database is locked" not in text
    assert text.count("code: as queued") == 4, text[-6000:]
    assert "changed after queueing" not in text

    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    experiments = mlflow.search_experiments()
    assert [e.name for e in experiments if e.name != "Default"] == ["gptmini"]
    runs = mlflow.search_runs(experiment_names=["gptmini"], output_format="list")
    assert sorted(r.data.tags.get("dvc.exp_name") for r in runs) == [f"lr-{r}" for r in RATES]
    client = mlflow.MlflowClient()
    for run in runs:
        assert run.info.status == "FINISHED", run.data.tags
        # each run records the code it imported: its own copy, as queued
        assert run.data.tags["code.src_sha256"] == queued_code
        assert "/.dvc/tmp/exps/" in run.data.tags["code.path"]
        assert run.data.params["train.learning_rate"] in {str(float(r)) for r in RATES}
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert sorted(m.step for m in history) == list(range(20))  # no lost step metric
        for name in ("bpc", "nll", "val_loss", "train.best_val_loss"):
            assert name in run.data.metrics, name


def _queue(project: PipelineProject, rate: str) -> None:
    project.run("dvc", "exp", "run", "--queue", "-S", f"train.learning_rate={rate}",
                "-n", f"lr-{rate}")


def _run_the_queue(project: PipelineProject, workers: int, tmp_path_factory,
                   rates: tuple[str, ...] | list[str] = RATES) -> dict[str, tuple[str, str]]:
    """Run the queue on `workers` workers to its end: each experiment's status and log."""
    try:
        project.run_detached("dvc", "queue", "start", "-j", str(workers),
                             log=tmp_path_factory.mktemp("logs") / "queue.log")
        status = _wait_for_the_queue(project, timeout=600)
        found = {}
        for rate in rates:
            lines = [ln for ln in status.splitlines() if f"lr-{rate}" in ln.split()]
            line = lines[-1] if lines else ""  # the last: a task queued again
            log = project.run("dvc", "queue", "logs", f"lr-{rate}", check=False)
            found[rate] = (line.split()[-1] if line else "missing", log.stdout + log.stderr)
        return found
    finally:
        project.run("dvc", "queue", "stop", "--kill", check=False)
        project.reap()


def _our_failure(log: str) -> bool:
    """A traceback through this project's code, or its stage runner's one-line error."""
    return ("Traceback" in log and "gptmini" in log) or "\nerror: " in log


def _wait_for_the_queue(project: PipelineProject, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = project.run("dvc", "queue", "status").stdout
        if not any(word in status for word in ("Queued", "Running")):
            return status
        time.sleep(2)
    pytest.fail(f"the queue did not finish in {timeout:.0f} s:\n{status}")
