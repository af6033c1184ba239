"""`gptmini runs` (gptmini.cli.runs): the MLflow runs of an experiment as a sorted table,
as CSV and as a plot against the recipe of params.yaml; a missing store is one line."""

from __future__ import annotations

import io

from gptmini.cli import main
from helpers import REPO


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_runs_lists_the_mlflow_runs_sorted(tmp_path, capsys):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("gptmini-test",
                                          artifact_location=(tmp_path / "art").as_uri())
    ids = {}
    for name, kind, bpc, wall in (("char", "char", 2.1, 700.0), ("gpt2", "bpe", 1.9, 1500.0),
                                  ("broken", "char", None, None)):
        with mlflow.start_run(experiment_id=experiment, run_name=name) as active:
            ids[name] = active.info.run_id
            mlflow.set_tags({"code.src_sha256": f"{name:0<64}",
                             "git.dirty": str(name == "broken").lower()})
            mlflow.log_params({"tokenizer.kind": kind, "tokenizer.encoding": "gpt2",
                               "model.n_layer": 6, "model.n_embd": 128, "model.n_head": 4,
                               "model.block_size": 256, "model.parameters": 1230976,
                               "train.max_steps": 1200, "train.batch_size": 32,
                               "train.learning_rate": 0.002})
            if bpc is not None:
                mlflow.log_metrics({"bpc": bpc, "perplexity": 5.0, "accuracy": 0.5,
                                    "train.wall_seconds": wall})
    code, out, _ = run(capsys, "runs", "--tracking-uri", uri, "--experiment", "gptmini-test")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["run", "run_id", "code", "started", "status", "tokenizer"]
    assert [line.split()[:3] for line in lines[1:4]] == [
        ["gpt2", ids["gpt2"][:8], "gpt20000"], ["char", ids["char"][:8], "char0000"],
        ["broken", ids["broken"][:8], "broken00*"]]  # a dirty checkout's code is starred
    assert "bpe:gpt2" in lines[1] and "1.9000" in lines[1] and "1,230,976" in lines[1]
    # the UI's training-runs view of this experiment, not its GenAI overview
    assert lines[4:] == [
        "", f"compare them in the MLflow UI: http://127.0.0.1:5000/#/experiments/{experiment}"
        "/runs?workflowType=machine_learning", f"(after: mlflow ui --backend-store-uri {uri})"]
    code, out, _ = run(capsys, "runs", "--tracking-uri", uri, "--experiment", "gptmini-test",
                       "--sort", "wall_s", "--descending", "--csv")
    import pandas as pd

    table = pd.read_csv(io.StringIO(out))
    assert list(table["run"]) == ["gpt2", "char", "broken"]
    assert list(table["wall_s"])[:2] == [1500.0, 700.0]
    code, out, _ = run(capsys, "runs", "--tracking-uri", uri, "--experiment", "gptmini-test",
                       "--match", "*r*", "--csv")
    assert list(pd.read_csv(io.StringIO(out))["run"]) == ["char", "broken"]  # not gpt2
    code, _, err = run(capsys, "runs", "--tracking-uri", uri, "--experiment", "nope")
    assert code == 2 and "no experiment 'nope'" in err and "gptmini-test" in err


def test_runs_plot_marks_the_runs_of_the_current_recipe(tmp_path, capsys):
    import mlflow
    import yaml

    from gptmini.core.config import load_params
    from gptmini.tracking.tags import flatten

    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    recipe = flatten(load_params(tmp_path / "params.yaml").recipe())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("grid", artifact_location=(tmp_path / "a").as_uri())
    for name, change, bpc in (("default", {}, 2.16), ("lr-0.02", {"train.muon_lr": 0.02}, 2.2),
                              ("unfinished", {}, None)):
        with mlflow.start_run(experiment_id=experiment, run_name=name):
            mlflow.log_params({**recipe, **change})
            mlflow.set_tag("cpu.model", "AMD EPYC 7B13 (family 25, model 1)")
            if bpc:
                mlflow.log_metrics({"bpc": bpc, "train.wall_seconds": 1000.0})
    png = tmp_path / "grid.png"
    code, out, _ = run(capsys, "runs", "--tracking-uri", uri, "--experiment", "grid",
                       "--plot", str(png), "--params", str(tmp_path / "params.yaml"))
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG"
    assert f"wrote {png}" in out
    from gptmini.cli.runs import runs_table

    table = runs_table(uri, "grid", recipe=load_params(tmp_path / "params.yaml"))
    assert dict(zip(table["run"], table["default"], strict=True)) == {
        "default": True, "lr-0.02": False, "unfinished": True}
    assert dict(zip(table["run"], table["changes"], strict=True)) == {
        "default": "", "lr-0.02": "train.muon_lr=0.02", "unfinished": ""}
    assert table.attrs["cpus"] == ["AMD EPYC 7B13 (family 25, model 1)"]
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["train"]["muon_lr"] = 0.02  # now the other run is the default
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    table = runs_table(uri, "grid", recipe=load_params(tmp_path / "params.yaml"))
    assert list(table.loc[table["default"], "run"]) == ["lr-0.02"]
    code, _, err = run(capsys, "runs", "--tracking-uri", uri, "--experiment", "grid",
                       "--plot", str(png), "--params", str(tmp_path / "none.yaml"))
    assert code == 2 and err.startswith("error: ") and "none.yaml: no such file" in err


def test_runs_without_a_store_says_so(tmp_path, capsys):
    code, _, err = run(capsys, "runs", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}")
    assert code == 2 and "no MLflow store at" in err
    assert not (tmp_path / "none.db").exists()
