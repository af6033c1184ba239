"""Parallel experiments: `dvc exp run --queue` and `dvc queue start -j 2` against the one
SQLite MLflow store of the checkout, on the real pipeline of a throwaway project."""

from __future__ import annotations

import time

import mlflow
import pytest

from conftest import make_corpus
from pipeline_project import PipelineProject

pytestmark = pytest.mark.slow
RATES = ("1e-3", "2e-3", "3e-3", "4e-3")


def test_four_queued_experiments_on_two_workers_all_finish_in_one_store(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("mirror") / "input.txt"
    corpus.write_text(make_corpus(600, seed=5))
    project = PipelineProject(tmp_path_factory.mktemp("queue"), corpus)
    params = project.params
    # 20 steps each, one thread per worker: two workers share the cores.
    params["train"].update(budget_chars=20 * 8 * 32, threads=1, eval_interval=10)
    project.write_params(params)
    project.run("git", "commit", "-qam", "tiny grid")
    for rate in RATES:
        project.run("dvc", "exp", "run", "--queue", "-S", f"train.learning_rate={rate}",
                    "-n", f"lr-{rate}")
    project.run("dvc", "queue", "start", "-j", "2")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = project.run("dvc", "queue", "status").stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(2)
    else:
        pytest.fail(f"the queue did not finish in 600 s:\n{status}")
    logs = "\n".join(project.run("dvc", "queue", "logs", f"lr-{rate}", check=False).stdout
                     for rate in RATES)
    assert status.count("Success") == 4, status + logs[-6000:]
    assert "database is locked" not in logs

    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    experiments = mlflow.search_experiments()
    assert [e.name for e in experiments if e.name != "Default"] == ["gptmini"]
    runs = mlflow.search_runs(experiment_names=["gptmini"], output_format="list")
    assert sorted(r.data.tags.get("dvc.exp_name") for r in runs) == [f"lr-{r}" for r in RATES]
    client = mlflow.MlflowClient()
    for run in runs:
        assert run.info.status == "FINISHED", run.data.tags
        assert run.data.params["train.learning_rate"] in {str(float(r)) for r in RATES}
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert sorted(m.step for m in history) == list(range(20))  # no lost step metric
        for name in ("bpc", "nll", "val_loss", "train.best_val_loss"):
            assert name in run.data.metrics, name
    project.run("dvc", "queue", "stop", check=False)
