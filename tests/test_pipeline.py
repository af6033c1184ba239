"""End to end: the real `dvc repro` in a temporary git repo on a tiny corpus and model:
every output, the MLflow run, byte-identical reruns, and exactly which stages a change of
code or params reruns."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from helpers import needs_tiktoken
from pipeline_project import PipelineProject
from references import mismatch, outs_hashes, unrecorded

pytestmark = pytest.mark.slow
STAGES = ("download", "tokenize", "train", "evaluate", "export")


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from helpers import make_corpus

    path = tmp_path_factory.mktemp("mirror") / "tinyshakespeare.txt"
    path.write_text(make_corpus(1500))
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory, corpus):
    p = PipelineProject(tmp_path_factory.mktemp("project"), corpus)
    p.first_repro = p.run("dvc", "repro")
    p.first_lock = yaml.safe_load((p.root / "dvc.lock").read_text())
    return p


def touch(project: PipelineProject, path: str) -> None:
    """Edit a source file of the project the way a developer does: a comment."""
    with open(project.root / path, "a") as fh:
        fh.write("# edited\n")


def test_first_repro_runs_every_stage_and_writes_every_output(project):
    assert ran(project.first_repro.stdout) == list(STAGES)
    root = project.root
    for path in ["data/raw/input.txt", "data/tokens/train.bin", "data/tokens/val.bin",
                 "data/tokens/tokenizer.json", "data/tokens/counts.json", "data/model/ckpt.pt",
                 "data/volatile/mlflow_run.json", "data/volatile/timings.json",
                 "metrics/tokenize.json", "metrics/train.json",
                 "metrics/train_log.csv", "metrics/eval_log.csv", "metrics/loss_curve.png",
                 "metrics/evaluate.json", "data/export/model.ts",
                 "data/export/evaluation_metrics.json", "data/export/tokenizer.json",
                 "dvc.lock"]:
        assert (root / path).is_file(), path
    steps = (root / "metrics/train_log.csv").read_text().splitlines()
    assert steps[0] == "step,loss,lr" and len(steps) == 41  # no timings in an artifact
    assert set(json.loads((root / "metrics/train.json").read_text())) == {
        "steps", "train_loss", "val_loss", "best_val_loss", "best_step", "parameters"}
    assert set(json.loads((root / "data/volatile/timings.json").read_text())["train"]) == {
        "wall_seconds", "tokens_per_second"}
    assert (root / "metrics/loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((root / "metrics/evaluate.json").read_text())
    counts = json.loads((root / "data/tokens/counts.json").read_text())["val"]
    assert metrics["tokens"] == metrics["chars"] == counts["chars"] - 1  # all but the first
    assert metrics["sliding_tokens"] == metrics["tokens"]  # the same split, other windows
    train_chars = json.loads((root / "data/tokens/counts.json").read_text())["train"]["chars"]
    assert metrics["train_tokens"] == metrics["train_chars"] == train_chars - 1
    record = json.loads((root / "data/export/evaluation_metrics.json").read_text())
    assert record["metrics"] == metrics
    assert record["tokenizer"]["kind"] == "char"
    assert record["model"]["parameters"] == \
        json.loads((root / "metrics/train.json").read_text())["parameters"]
    ckpt = torch.load(root / "data/model/ckpt.pt", weights_only=True)
    assert ckpt["step"] == 40  # what its readers need, and no optimizer state:
    assert set(ckpt) == {"model", "model_config", "tokenizer", "step"}
    assert list(root.glob("data/model/*")) == [root / "data/model/ckpt.pt"]


def test_mlflow_store_holds_one_run_with_everything(project):
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["gptmini"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    experiment = mlflow.get_experiment_by_name("gptmini")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.info.status == "FINISHED"
    for name in ("perplexity", "accuracy", "nll", "bpc", "val_loss", "train_loss",
                 "train_lr", "train_tokens_per_second", "train.best_val_loss",
                 "train.wall_seconds", "train.tokens_per_second"):
        assert name in run.data.metrics, name
    assert run.data.params["model.n_layer"] == "2"
    assert run.data.params["tokenizer.kind"] == "char"
    assert run.data.params["evaluate.batch_size"] == "8"
    tags = run.data.tags
    assert tags["git.commit"] == project.run("git", "rev-parse", "HEAD").stdout.strip()
    assert tags["git.dirty"] == "false"  # every tracked file as committed
    assert tags["data.sha256"] == project.params["data"]["sha256"]
    assert {k: tags[k] for k in ("version.torch", "version.mlflow", "version.dvc")} == {
        "version.torch": torch.__version__, "version.mlflow": mlflow.__version__,
        "version.dvc": importlib.metadata.version("dvc")}
    assert tags["version.tiktoken"] == importlib.metadata.version("tiktoken")
    assert "dvc.exp_name" not in tags  # a plain `dvc repro` (test_queue.py: `dvc exp run`)
    assert tags["tokenizer"] == "char"
    # what the numbers were computed on: the CPU, its ISA, the pinned kernel path, the dtype
    from gptmini.core.numerics import cpu_model, cpu_vendor

    assert tags["cpu.model"] == cpu_model() and tags["cpu.model"] != "unknown"
    assert tags["cpu.vendor"] == cpu_vendor() in ("AuthenticAMD", "GenuineIntel")
    assert tags["cpu.isa"] in ("avx2", "avx512", "avx512_bf16")
    assert (tags["cpu.kernel_path"], tags["cpu.mkl_cbwr"]) == ("AVX2", "AVX2")
    assert tags["train.dtype"] == "float32" and tags["cpu.threads"] == "2"
    # the code the stages ran: the project's own src/, not the editable install's
    from gptmini.core.hashing import source_sha256

    assert tags["code.path"] == str(project.root / "src" / "gptmini")
    assert tags["code.src_sha256"] == source_sha256(project.root / "src" / "gptmini")
    client = mlflow.MlflowClient()
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 40
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"loss_curve.png", "evaluation_metrics.json", "export"} <= artifacts
    assert (project.root / "mlartifacts").is_dir()


def test_dvc_metrics_show_lists_the_evaluation(project):
    shown = project.run("dvc", "metrics", "show").stdout
    assert "bpc" in shown and "perplexity" in shown


def test_gptmini_evaluate_on_the_validation_text_reproduces_the_stage_to_the_last_digit(
        project, tmp_path):
    from gptmini.data.tokenizers import from_definition
    from gptmini.data.tokens import load_tokens

    root = project.root
    definition = json.loads((root / "data/tokens/tokenizer.json").read_text())
    val = load_tokens(root / "data/tokens/val.bin", definition["dtype"])
    text = from_definition(definition).decode([int(t) for t in val])
    (tmp_path / "val.txt").write_text(text, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "gptmini.cli", "evaluate", str(tmp_path / "val.txt"),
         "--json", "-q", "--batch-size", str(project.params["evaluate"]["batch_size"]),
         "--export-dir", str(root / "data/export")],
        cwd=tmp_path, env=project.env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    from gptmini.report import protocol_metrics

    headline = protocol_metrics(json.loads((root / "metrics/evaluate.json").read_text()), "")
    assert json.loads(proc.stdout) == headline


def test_second_repro_runs_nothing_and_status_is_clean(project):
    out = project.run("dvc", "repro").stdout
    assert ran(out) == []
    status = project.run("dvc", "status").stdout
    assert "up to date" in status


def test_every_machine_reproduces_the_committed_outputs_byte_for_byte(project):
    """The tiny pipeline's outputs (model, metrics, export: 10 md5s) are committed, per CPU
    vendor (tests/references.py): every run on every CPU generation of a vendor, AVX2 or
    AVX-512, must make its vendor's bytes, so they hold no run id, clock or timing, and
    float32 training follows no ISA-dependent kernel path. After a change that means to
    change the numbers, commit the hashes this test prints."""
    got = outs_hashes(project.first_lock)
    assert len(got) == 10
    problem = mismatch("tiny_pipeline", got)
    assert not problem, problem
    missing = unrecorded("tiny_pipeline", got)
    if missing:
        pytest.skip(missing)


@pytest.mark.parametrize("path,expected", [
    # A comment in the CSV and plot writer reruns train; its outputs come out identical,
    # so evaluate and export, whose inputs did not change, do not rerun.
    ("src/gptmini/training/logs.py", ["train"]),
    ("src/gptmini/export/writer.py", ["export"]),
    ("src/gptmini/evaluation/metrics.py", ["evaluate"]),
    # (a file every stage runs, such as core/atomic.py, is a dependency of every stage:
    # test_dvc_deps.py, statically; a tokenizer change reruns every stage here, below)
], ids=lambda v: v if isinstance(v, str) else None)
def test_editing_a_library_file_reruns_exactly_the_stages_that_run_it(project, path, expected):
    touch(project, path)
    status = project.run("dvc", "status").stdout
    # DVC names the dependency that changed: the file, or the folder declared for it.
    assert "changed deps" in status
    assert any(f"modified:{' ' * 11}{dep}\n" in status
               for dep in [path, *map(str, Path(path).parents)]), status
    assert ran(project.run("dvc", "repro").stdout) == expected
    assert ran(project.run("dvc", "repro").stdout) == []


def test_a_train_param_reruns_train_evaluate_and_export(project):
    params = project.params
    params["train"]["learning_rate"] = 2e-3
    project.write_params(params)
    assert ran(project.run("dvc", "repro").stdout) == ["train", "evaluate", "export"]
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    latest = mlflow.search_runs(experiment_names=["gptmini"], output_format="list",
                                order_by=["start_time DESC"])[0]
    assert latest.data.params["train.learning_rate"] == "0.002"
    assert latest.data.tags["git.dirty"] == "true"  # params.yaml edited, not committed


def test_an_evaluate_param_reruns_evaluate_not_train(project):
    params = project.params
    params["evaluate"]["batch_size"] = 3
    project.write_params(params)
    out = ran(project.run("dvc", "repro").stdout)
    assert out[0] == "evaluate" and "train" not in out and "tokenize" not in out
    # MLflow never changes a logged param: the new evaluation is a run of its own that
    # names the training run it continues.
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    latest = mlflow.search_runs(experiment_names=["gptmini"], output_format="list",
                                order_by=["start_time DESC"])[0]
    assert latest.data.params["evaluate.batch_size"] == "3" and "bpc" in latest.data.metrics
    assert mlflow.get_run(latest.data.tags["gptmini.train_run_id"]).data.params[
        "evaluate.batch_size"] == "8"


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
    runs = mlflow.search_runs(experiment_names=["gptmini"], output_format="list",
                              order_by=["start_time DESC"])
    # (an evaluation that only reran under new evaluate params has a run without training)
    assert {r.data.tags.get("tokenizer") for r in runs} - {None} == {"bpe", "char"}
    assert runs[0].data.tags["tokenizer"] == "bpe" and "bpc" in runs[0].data.metrics
