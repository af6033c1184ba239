"""The `gptmini` command on a tiny export: its output, and one clear line (exit status 2)
for everything a user can get wrong, never a traceback."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tomllib

import numpy as np
import pytest
import torch

from gptmini.cli import build_parser, main
from gptmini.evaluation.metrics import evaluate_tokens
from gptmini.inference.generation import Sampling
from gptmini.report import describe_model, metrics_line, metrics_text
from helpers import REPO
from tiny_export import build_tiny_export, generated

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_export(tmp_path_factory.mktemp("cli"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_prints_the_prompt_then_the_text_and_the_speed(tiny, capsys):
    code, out, err = run(capsys, "generate", "ROMEO:", "-n", "40", "--seed", "3",
                         "--export-dir", str(tiny.directory))
    assert code == 0
    expected = generated(tiny.model, tiny.tokenizer, "ROMEO:", Sampling(40, seed=3))
    assert out == "ROMEO:" + expected + "\n"
    assert "40 chars in" in err and "chars/s; seed 3]" in err


def test_generate_sampling_flags_reach_the_sampler(tiny, capsys, monkeypatch):
    monkeypatch.setenv("GPTMINI_EXPORT_DIR", str(tiny.directory))
    code, out, _ = run(capsys, "generate", "JULIET:", "-n", "60", "-t", "1.2", "--top-k", "5",
                       "--top-p", "0.9", "--seed", "11", "--stop", "e", "--no-echo", "-q")
    assert code == 0
    expected = generated(tiny.model, tiny.tokenizer, "JULIET:",
                        Sampling(60, 1.2, 5, 0.9, seed=11, stop="e"))
    assert out == expected + "\n" and "e" not in expected


def test_generate_reads_the_prompt_from_stdin(tiny, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("KING HENRY:\n"))
    code, out, _ = run(capsys, "generate", "-", "-n", "5", "-t", "0", "-q",
                       "--export-dir", str(tiny.directory))
    assert code == 0 and out.startswith("KING HENRY:\n") and len(out) == len("KING HENRY:\n") + 6


def test_an_empty_and_an_overlong_prompt_are_said_on_stderr(tiny, capsys):
    code, _, err = run(capsys, "generate", "", "-n", "5", "--export-dir", str(tiny.directory))
    assert code == 0 and "note: the prompt is empty" in err
    code, _, err = run(capsys, "generate", "thou " * 20, "-n", "5", "--export-dir",
                       str(tiny.directory))
    assert code == 0 and "note: the prompt is 100 tokens long: the model sees only the last 24" \
        in err


@pytest.mark.parametrize("argv,message", [
    (["generate", "café"], "characters outside the model's vocabulary in the prompt: 'é' "
                           "(U+00E9)"),
    (["generate", "a\x1b[2Jb"], "control characters (or lone surrogates) are not allowed in "
                                "the prompt: '\\x1b' (U+001B)"),
    (["generate", "x", "-n", "0"], "length = 0: must be a whole number, 1 or more"),
    (["generate", "x", "-n", "-5"], "length = -5: must be a whole number, 1 or more"),
    (["generate", "x", "-t", "-1"], "temperature = -1.0: must be a number, 0 or more"),
    (["generate", "x", "-t", "nan"], "temperature = nan"),
    (["generate", "x", "--top-k", "0"], "top-k = 0: must be a whole number from 1"),
    (["generate", "x", "--top-k", "10000"], "top-k = 10000"),
    (["generate", "x", "--top-p", "0"], "top-p = 0.0: must be in (0, 1]"),
    (["generate", "x", "--top-p", "1.5"], "top-p = 1.5"),
    (["generate", "x", "--seed", "-2"], "seed = -2"),
    (["evaluate", "/no/such/file.txt"], "/no/such/file.txt: no such file"),
])
def test_what_a_user_gets_wrong_is_one_clear_line(tiny, capsys, argv, message):
    code, _, err = run(capsys, *argv, "--export-dir", str(tiny.directory))
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [["generate", "x", "-n", "ten"], ["generate", "x", "-n", "2.5"],
                                  ["generate", "x", "-t", "hot"], ["nope"], ["evaluate"],
                                  ["runs", "--sort", "colour"], ["app", "--port", "-1"], []])
def test_bad_flags_show_the_usage_and_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "usage: gptmini" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["generate"], ["evaluate"], ["runs"], ["info"],
                                     ["app"]])
def test_help_everywhere(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: gptmini" in capsys.readouterr().out


def test_a_missing_export_is_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "generate", "x", "--export-dir", str(tmp_path / "nothing"))
    assert code == 2 and err.startswith("error: no export at") and "dvc repro" in err


def test_an_old_or_broken_export_is_one_line(tiny, tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    for name in ("tokenizer.json", "evaluation_metrics.json"):
        (old / name).write_text((tiny.directory / name).read_text())
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(old / "model.ts"))
    code, _, err = run(capsys, "info", "--export-dir", str(old))
    assert code == 2 and "exported before generation was added" in err
    (old / "model.ts").write_bytes(b"not a model")
    code, _, err = run(capsys, "info", "--export-dir", str(old))
    assert code == 2 and "is not a TorchScript model" in err and err.count("\n") == 1
    (old / "tokenizer.json").unlink()
    code, _, err = run(capsys, "info", "--export-dir", str(old))
    assert code == 2 and "has no tokenizer.json" in err


def test_evaluate_gives_the_evaluate_stage_metrics(tiny, tmp_path, capsys):
    text = "ROMEO:\nThou art the king, sweet lord; what night is this?\n" * 3
    path = tmp_path / "text.txt"
    path.write_text(text)
    code, out, _ = run(capsys, "evaluate", str(path), "--json", "-q",
                       "--export-dir", str(tiny.directory))
    assert code == 0
    ids = np.asarray(tiny.tokenizer.encode(text))
    expected = evaluate_tokens(tiny.model, ids, len(text) - 1, progress=False)
    got = json.loads(out)
    assert got == pytest.approx(expected, rel=1e-9)
    code, out, _ = run(capsys, "evaluate", str(path), "-q", "--export-dir", str(tiny.directory))
    assert code == 0
    assert out == f"{path}:\n{metrics_text(expected)}\n"
    assert re.search(rf"\n  BPC +{expected['bpc']:.4f} bits/char\n", out)
    assert re.search(rf"\n  perplexity +{expected['perplexity']:.4f}\n", out)
    assert re.search(rf"\n  tokens predicted +{len(ids) - 1:,}\n", out)


def test_evaluate_refuses_what_it_cannot_score(tiny, tmp_path, capsys):
    cases = {"latin1.txt": ("caf\xe9".encode("latin-1"), "not UTF-8 text"),
             "short.txt": (b"a", "it needs at least 2"),
             "emoji.txt": ("ROMEO: \U0001F600".encode(), "'😀' (U+1F600)")}
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        code, _, err = run(capsys, "evaluate", str(tmp_path / name), "--export-dir",
                           str(tiny.directory))
        assert code == 2 and message in err, name
    code, _, err = run(capsys, "evaluate", str(tmp_path), "--export-dir", str(tiny.directory))
    assert code == 2 and "is a directory" in err


def test_info_describes_the_export(tiny, capsys):
    code, out, _ = run(capsys, "info", "--export-dir", str(tiny.directory))
    assert code == 0
    assert f"{tiny.model.num_parameters():,} parameters" in out
    for name in ("model.ts", "model.pt2", "tokenizer.json", "evaluation_metrics.json"):
        assert name in out
    assert "BPC 1.5000 bits/char" in out and "trained 7 steps" in out
    record = json.loads((tiny.directory / "evaluation_metrics.json").read_text())
    assert f"\nmodel: {describe_model(record)}\n" in out
    assert f"\nvalidation: {metrics_line(record['metrics'])}" in out
    assert re.search(r"weights sha256: [0-9a-f]{64}\n", out)
    code, out, _ = run(capsys, "info", "--json", "--export-dir", str(tiny.directory))
    assert json.loads(out)["model"]["step"] == 7


def test_the_console_script_and_module_entry_points():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["gptmini"] == "gptmini.cli:main"
    proc = subprocess.run([sys.executable, "-m", "gptmini.cli", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "generate" in proc.stdout and "runs" in proc.stdout


def test_relative_path_variables_are_made_absolute_first(tiny, tmp_path, capsys,
                                                         monkeypatch):
    monkeypatch.chdir(tiny.directory.parent)
    monkeypatch.setenv("GPTMINI_EXPORT_DIR", tiny.directory.name)
    code, out, _ = run(capsys, "info")
    assert code == 0 and f"export: {tiny.directory.resolve()}/" in out
    assert os.environ["GPTMINI_EXPORT_DIR"] == str(tiny.directory.resolve())


def test_the_app_binds_127_0_0_1_unless_told():
    assert build_parser().parse_args(["app"]).host == "127.0.0.1"
    assert build_parser().parse_args(["app", "--host", "0.0.0.0"]).host == "0.0.0.0"


def test_team_dvc_remote_takes_keys_that_begin_with_a_dash(tmp_path):
    """A url-safe secret begins with '-' one time in 64 (CI met one): `gptmini team
    dvc-remote` must give it to `dvc remote modify` as the value, not as an option."""
    import configparser

    from gptmini.team import stack as team
    from gptmini.team.cli import configure_dvc

    state, repo = tmp_path / "state", tmp_path / "repo"
    state.mkdir()
    repo.mkdir()
    keys = {"s3_access_key_id": "-GMKEY", "s3_secret_access_key": "-k58ZYx4HAtKG8CNYL9FAe"}
    (state / "secrets.json").write_text(json.dumps(keys))
    stack = team.Stack(state=str(state), pgdata="", pg_port=1, s3_port=9000, mlflow_port=2)
    dvc = os.path.join(os.path.dirname(sys.executable), "dvc")
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=repo, check=True, timeout=120)
    configure_dvc(stack, repo)
    config = configparser.ConfigParser()
    config.read(repo / ".dvc" / "config.local")
    remote = config["'remote \"team\"'"]  # DVC's config writes the quotes
    assert (remote["url"], remote["endpointurl"]) == ("s3://gptmini/dvc", stack.s3_url)
    assert remote["access_key_id"] == keys["s3_access_key_id"]
    assert remote["secret_access_key"] == keys["s3_secret_access_key"]
    assert config["core"]["remote"] == "team"
