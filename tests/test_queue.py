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
    path = project.root / "src" / "gptmini" / "training" / "run.py"
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
        project.run("dvc", "exp", "run", "--queue", "-S", f"train.learning_rate={rate}",
                    "-n", f"lr-{rate}")
    # The workspace moves on while the queue runs (as it does during a grid); no PYTHONPATH
    # from the harness: dvc.yaml's commands alone must make each experiment import its own.
    _mark_the_train_code(project, "changed after queueing")
    assert "PYTHONPATH" not in project.env
    try:
        project.run_detached("dvc", "queue", "start", "-j", "2",
                             log=tmp_path_factory.mktemp("logs") / "queue.log")
        status = _wait_for_the_queue(project, timeout=600)
        logs = "\n".join(project.run("dvc", "queue", "logs", f"lr-{rate}", check=False).stdout
                         for rate in RATES)
    finally:
        project.run("dvc", "queue", "stop", "--kill", check=False)
        project.reap()
    assert status.count("Success") == 4, status + logs[-6000:]
    assert "database is locked" not in logs
    assert logs.count("code: as queued") == 4, logs[-6000:]
    assert "changed after queueing" not in logs

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


def _wait_for_the_queue(project: PipelineProject, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = project.run("dvc", "queue", "status").stdout
        if not any(word in status for word in ("Queued", "Running")):
            return status
        time.sleep(2)
    pytest.fail(f"the queue did not finish in {timeout:.0f} s:\n{status}")
