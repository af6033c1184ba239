"""Sharing through DVC, end to end with the real tools in temporary directories: a tiny
pipeline runs once, `dvc push` sends its outputs to a shared-directory remote, and a fresh
git clone gets the model with `dvc pull` (no training); a colleague's experiment travels
through a bare git repository with `dvc exp push` / `dvc exp pull`. The same run's MLflow
record shows the corpus as its dataset and the system metrics of training."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from helpers import make_corpus
from pipeline_project import PipelineProject

pytestmark = pytest.mark.slow
OUTPUTS = ("data/raw/input.txt", "data/tokens/train.bin", "data/model/ckpt.pt",
           "data/export/model.ts", "data/export/tokenizer.json",
           "data/export/evaluation_metrics.json")


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


def git(cwd: Path, *args: str, env: dict | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, text=True, capture_output=True,
                          timeout=120)
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def clone(project: PipelineProject, source: Path, target: Path) -> PipelineProject:
    """A teammate's checkout: `git clone`, and the same tools (a copy of project's env with
    this clone's src/ on the path)."""
    git(target.parent, "clone", "-q", str(source), target.name, env=project.env)
    teammate = PipelineProject.__new__(PipelineProject)
    teammate.root = target
    teammate.env = {**project.env, "PYTHONPATH": str(target / "src")}
    return teammate


def generate(project: PipelineProject, *args: str) -> str:
    proc = project.run("python", "-m", "gptmini.cli", "generate", "ROMEO:", "-n", "30",
                       "--seed", "7", "-q", *args)
    return proc.stdout


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A colleague's project after `dvc repro`, committed, with a shared-directory DVC remote
    (the default, in .dvc/config) and a bare git repository as `origin`, both pushed."""
    base = tmp_path_factory.mktemp("share")
    corpus = base / "tinyshakespeare.txt"
    corpus.write_text(make_corpus(1500))
    project = PipelineProject(base / "colleague", corpus)
    # Short runs: sample system metrics every half second (MLflow's default is 10 s).
    project.env["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "0.5"
    remote, origin = base / "dvc-remote", base / "origin.git"
    project.run("dvc", "remote", "add", "-d", "shared", str(remote))
    project.run("dvc", "repro")
    project.run("git", "add", "-A")
    project.run("git", "commit", "-q", "-m", "tiny run")
    project.pushed = project.run("dvc", "push")
    git(base, "init", "-q", "--bare", "-b", "main", str(origin))
    project.run("git", "remote", "add", "origin", str(origin))
    project.run("git", "push", "-q", "origin", "main")
    project.base, project.remote, project.origin = base, remote, origin
    return project


def test_a_fresh_clone_pulls_the_model_instead_of_training(shared):
    assert (shared.remote / "files" / "md5").is_dir()  # DVC 3's remote layout
    teammate = clone(shared, shared.origin, shared.base / "teammate")
    assert not (teammate.root / "data").exists()
    # The clone knows the remote from the committed .dvc/config.
    assert "shared" in teammate.run("dvc", "remote", "list").stdout
    teammate.run("dvc", "pull")
    for path in OUTPUTS:
        assert (teammate.root / path).read_bytes() == (shared.root / path).read_bytes(), path
    assert "up to date" in teammate.run("dvc", "status").stdout
    assert ran(teammate.run("dvc", "repro").stdout) == []  # nothing to train or rebuild
    text = generate(teammate)
    assert len(text) > len("ROMEO:") and text == generate(shared)


def test_a_teammate_applies_a_colleagues_experiment_and_gets_its_model(shared):
    committed_model = (shared.root / "data/export/model.ts").read_bytes()
    shared.run("dvc", "exp", "run", "-n", "lr-high", "-S", "train.learning_rate=0.01")
    experiment_export = {p: (shared.root / p).read_bytes() for p in OUTPUTS[2:]}
    # The experiment's model is not the committed one (else this test would prove nothing
    # about which model the teammate gets).
    assert experiment_export["data/export/model.ts"] != committed_model
    committed = shared.run("git", "show", "HEAD:dvc.lock").stdout
    shared.run("dvc", "exp", "push", "origin", "lr-high")
    assert "refs/exps/" in git(shared.origin, "for-each-ref")

    teammate = clone(shared, shared.origin, shared.base / "teammate-exp")
    assert "lr-high" in teammate.run("dvc", "exp", "list", "origin").stdout
    teammate.run("dvc", "exp", "pull", "origin", "lr-high")
    teammate.run("dvc", "exp", "apply", "lr-high")
    teammate.run("dvc", "pull")
    params = teammate.params
    assert params["train"]["learning_rate"] == 0.01
    for path, content in experiment_export.items():
        assert (teammate.root / path).read_bytes() == content, path
    assert (teammate.root / "dvc.lock").read_text() != committed
    assert "up to date" in teammate.run("dvc", "status").stdout
    assert generate(teammate) == generate(shared)


def test_the_run_records_the_corpus_as_its_dataset_and_system_metrics(shared):
    mlflow.set_tracking_uri(f"sqlite:///{shared.root / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["gptmini"], output_format="list",
                             order_by=["attributes.start_time ASC"])[0]
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    params = shared.params["data"]
    assert json.loads(dataset.source) == {"url": params["url"]}
    assert dataset.digest == params["sha256"][:36]
    assert {t.key: t.value for t in inputs[0].tags}["sha256"] == params["sha256"]
    system = [k for k in run.data.metrics if k.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system, system
    assert "system/system_memory_usage_megabytes" in system, system


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-x", "-q"]))
