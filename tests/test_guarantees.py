"""Crash and resume to bit-exact weights, and no resume of a stale state, each on the real
train stage of a throwaway DVC project (signals, several processes and a bad param:
test_processes.py; byte-identical outputs on every machine: test_pipeline.py)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

import mlflow
import pytest
import torch

from helpers import make_corpus
from pipeline_project import PipelineProject, make_project, weights_of

pytestmark = pytest.mark.slow
STEPS = 400  # budget_chars buys steps of 8 x 32 tokens (TINY_PARAMS) of 1 character each
LONG = {"budget_chars": STEPS * 8 * 32, "checkpoint_interval": 25, "eval_interval": 100}


def exported_record(project: PipelineProject) -> str:
    return (project.root / "data/export/evaluation_metrics.json").read_text()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("mirror") / "input.txt"
    path.write_text(make_corpus(1500, seed=3))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus):
    project = make_project(tmp_path_factory, corpus, "reference", **LONG)
    project.run("dvc", "repro")
    return project


def kill_after_a_save(project: PipelineProject, latest: float = 0.0) -> int:
    """Run `dvc repro train` and SIGKILL it (dvc and the training process) at a random
    moment up to `latest` seconds after its first resume state is saved; the saved step."""
    manifest = project.root / "data/train_state/manifest.json"
    for _attempt in range(3):
        proc = subprocess.Popen([project.dvc, "repro", "train"], cwd=project.root,
                                env=project.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 900  # a shared, loaded machine can take minutes
        while not manifest.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not manifest.exists() and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("no resume state was saved within 900 s")
        time.sleep(random.uniform(0.0, latest))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return json.loads(manifest.read_text())["step"]
        proc.wait()
        (project.root / "data/model/ckpt.pt").unlink(missing_ok=True)
    pytest.fail("training finished before it could be killed, three times")


def test_killed_training_resumes_to_bit_identical_weights(tmp_path_factory, corpus, reference):
    project = make_project(tmp_path_factory, corpus, "crash", **LONG)
    project.run("dvc", "repro", "tokenize")
    kill_after_a_save(project, latest=1.5)
    manifest = project.root / "data/train_state/manifest.json"
    saved_step = json.loads(manifest.read_text())["step"]
    assert 0 < saved_step < STEPS
    assert not (project.root / "data/model/ckpt.pt").exists()

    rerun = project.run("dvc", "repro")
    assert f"resuming from step {saved_step}" in rerun.stdout
    assert weights_of(project) == weights_of(reference)
    assert exported_record(project) == exported_record(reference)
    assert not (project.root / "data/train_state").exists()  # cleared once done
    # The crashed run was continued, not duplicated, and its step metrics have no repeats.
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["gptmini"], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["resumed_from_step"] == str(saved_step)
    history = mlflow.MlflowClient().get_metric_history(runs[0].info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(STEPS))


@pytest.mark.parametrize("change,message", [
    ("learning_rate", "saved state is for other params or data"),
    ("processes", "saved state is for 1 process(es), this run has 2"),
])
def test_a_changed_input_does_not_resume_a_stale_state(tmp_path_factory, corpus, change,
                                                        message):
    """A real state, left by a killed run, then a real change: a train param, or the number
    of processes (the world size)."""
    project = make_project(tmp_path_factory, corpus, f"stale-{change}", budget_chars=100 * 8 * 32,
                           checkpoint_interval=10, eval_interval=50)
    project.run("dvc", "repro", "tokenize")
    assert kill_after_a_save(project) > 0
    params = project.params
    params["train"].update({"learning_rate": 2e-3} if change == "learning_rate" else
                           {"processes": 2, "budget_chars": 30 * 2 * 8 * 32})
    project.write_params(params)
    out = project.run("dvc", "repro", "train").stdout
    assert f"data/train_state: {message}; starting over" in out, out[-3000:]
    assert "resuming" not in out
    steps = json.loads((project.root / "metrics/train.json").read_text())["steps"]
    assert steps == (100 if change == "learning_rate" else 30)
    assert not (project.root / "data/train_state").exists()
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["gptmini"], output_format="list",
                              order_by=["start_time DESC"])
    assert runs[0].info.status == "FINISHED" and "resumed_from_step" not in runs[0].data.tags
    assert runs[0].info.run_id != runs[-1].info.run_id  # not the killed run, continued


def test_checkpoint_loads_with_weights_only(reference):
    state = torch.load(reference.root / "data/model/ckpt.pt", weights_only=True)
    assert state["step"] == STEPS
