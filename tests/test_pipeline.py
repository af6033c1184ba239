"""End to end: the real `dvc repro` in a temporary git repo on a tiny corpus and model."""

from __future__ import annotations

import json
import re

import mlflow
import pytest
import torch

from conftest import needs_tiktoken
from pipeline_project import PipelineProject

pytestmark = pytest.mark.slow
STAGES = ("download", "tokenize", "train", "evaluate", "export")


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from conftest import make_corpus

    root = tmp_path_factory.mktemp("project")
    corpus = tmp_path_factory.mktemp("mirror") / "tinyshakespeare.txt"
    corpus.write_text(make_corpus(1500))
    p = PipelineProject(root, corpus)
    p.first_repro = p.run("dvc", "repro")
    return p


def test_first_repro_runs_every_stage_and_writes_every_output(project):
    assert ran(project.first_repro.stdout) == list(STAGES)
    root = project.root
    for path in ["data/raw/input.txt", "data/tokens/train.bin", "data/tokens/val.bin",
                 "data/tokens/tokenizer.json", "data/tokens/counts.json", "data/model/ckpt.pt",
                 "data/model/mlflow_run.json", "metrics/tokenize.json", "metrics/train.json",
                 "metrics/train_log.csv", "metrics/eval_log.csv", "metrics/loss_curve.png",
                 "metrics/evaluate.json", "data/export/model.ts",
                 "data/export/evaluation_metrics.json", "data/export/tokenizer.json",
                 "dvc.lock"]:
        assert (root / path).is_file(), path
    steps = (root / "metrics/train_log.csv").read_text().splitlines()
    assert steps[0] == "step,loss,lr,tokens_per_second" and len(steps) == 41
    assert (root / "metrics/loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((root / "metrics/evaluate.json").read_text())
    assert metrics["bpc"] == pytest.approx(metrics["nll"] / 0.6931471805599453)
    record = json.loads((root / "data/export/evaluation_metrics.json").read_text())
    assert record["metrics"] == metrics
    assert record["tokenizer"]["kind"] == "char"
    assert record["model"]["parameters"] > 0
    ckpt = torch.load(root / "data/model/ckpt.pt", weights_only=True)
    assert ckpt["step"] == 40 and set(ckpt) >= {"model", "optimizer", "model_config"}


def test_mlflow_store_holds_one_run_with_everything(project):
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["gptmini"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    for name in ("perplexity", "accuracy", "nll", "bpc", "val_loss", "train_loss",
                 "train_lr", "train_tokens_per_second"):
        assert name in run.data.metrics, name
    assert run.data.params["model.n_layer"] == "2"
    assert run.data.params["tokenizer.kind"] == "char"
    assert run.data.params["evaluate.batch_size"] == "8"
    assert len(run.data.tags["git.commit"]) == 40
    assert run.data.tags["tokenizer"] == "char"
    client = mlflow.MlflowClient()
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 40
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"loss_curve.png", "evaluation_metrics.json", "export"} <= artifacts
    assert (project.root / "mlartifacts").is_dir()


def test_dvc_metrics_show_lists_the_evaluation(project):
    shown = project.run("dvc", "metrics", "show").stdout
    assert "bpc" in shown and "perplexity" in shown


def test_second_repro_runs_nothing_and_status_is_clean(project):
    out = project.run("dvc", "repro").stdout
    assert ran(out) == []
    status = project.run("dvc", "status").stdout
    assert "up to date" in status


@needs_tiktoken
def test_changing_the_tokenizer_reruns_tokenize_and_everything_after(project):
    params = project.params
    params["tokenizer"]["kind"] = "bpe"
    project.write_params(params)
    out = project.run("dvc", "repro").stdout
    assert ran(out) == ["tokenize", "train", "evaluate", "export"]
    record = json.loads((project.root / "data/export/evaluation_metrics.json").read_text())
    assert record["tokenizer"] == {"kind": "bpe", "encoding": "gpt2", "vocab_size": 50257,
                                   "dtype": "uint16"}
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["gptmini"], output_format="list")
    assert sorted(r.data.tags["tokenizer"] for r in runs) == ["bpe", "char"]
    assert all("bpc" in r.data.metrics for r in runs)
