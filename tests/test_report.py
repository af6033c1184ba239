"""The presentation layer: each formatter, and the same numbers in the same words wherever
metrics and the model are shown (the CLI, the app, the export's README)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gptmini.report import (
    describe_model,
    describe_tokenizer,
    format_number,
    metric_rows,
    metrics_line,
    metrics_markdown,
    metrics_text,
    protocol_metrics,
    with_prefix,
)

METRICS = {"nll": 1.528746, "perplexity": 4.612234, "accuracy": 0.546031, "bpc": 2.205449,
           "nats_per_char": 1.528746, "tokens": 111539, "chars": 111539}
RECORD = {
    "metrics": METRICS,
    "model": {"name": "GPT-Mini", "parameters": 1230976, "step": 2000,
              "weights_sha256": "0" * 64,
              "config": {"n_layer": 6, "n_head": 4, "n_embd": 128, "block_size": 256,
                         "dropout": 0.0, "bias": True, "vocab_size": 65}},
    "tokenizer": {"kind": "char", "vocab_size": 65, "dtype": "uint16"},
}


def test_numbers_have_one_format_each():
    assert format_number("nll", 1.528746) == "1.5287"
    assert format_number("perplexity", 4.6122) == "4.6122"
    assert format_number("accuracy", 0.5) == "0.5000"
    assert format_number("bpc", 2) == "2.0000"
    assert format_number("tokens", 1234567) == "1,234,567"
    assert format_number("chars", 12.0) == "12"


def test_metric_rows_label_value_and_unit_in_order():
    assert metric_rows(METRICS) == [
        ("NLL", "1.5287 nats/token"), ("perplexity", "4.6122"), ("accuracy", "0.5460"),
        ("BPC", "2.2054 bits/char"), ("tokens predicted", "111,539"),
        ("characters", "111,539")]


def test_missing_metrics_are_left_out():
    assert metric_rows({"bpc": 1.5, "nll": 1.0}) == [("NLL", "1.0000 nats/token"),
                                                     ("BPC", "1.5000 bits/char")]
    assert metric_rows({}) == []
    assert metrics_line({}) == ""
    assert metrics_text({}) == ""
    assert metrics_markdown({}) == "No metrics.\n"


def test_metrics_line():
    assert metrics_line(METRICS) == ("NLL 1.5287 nats/token, perplexity 4.6122, accuracy "
                                     "0.5460, BPC 2.2054 bits/char (111,539 tokens predicted, "
                                     "111,539 characters)")
    assert metrics_line({"bpc": 1.5}) == "BPC 1.5000 bits/char"
    assert metrics_line({"tokens": 3}) == "3 tokens predicted"


def test_metrics_text_is_aligned():
    assert metrics_text(METRICS) == (
        "  NLL               1.5287 nats/token\n"
        "  perplexity        4.6122\n"
        "  accuracy          0.5460\n"
        "  BPC               2.2054 bits/char\n"
        "  tokens predicted  111,539\n"
        "  characters        111,539")
    assert metrics_text({"bpc": 1.5, "accuracy": 0.25}, indent="") == (
        "accuracy  0.2500\nBPC       1.5000 bits/char")


def test_metrics_markdown_table():
    assert metrics_markdown(METRICS) == (
        "| metric | value |\n|---|---|\n"
        "| NLL | 1.5287 nats/token |\n"
        "| perplexity | 4.6122 |\n"
        "| accuracy | 0.5460 |\n"
        "| BPC | 2.2054 bits/char |\n"
        "| tokens predicted | 111,539 |\n"
        "| characters | 111,539 |\n")


def test_describe_tokenizer():
    assert describe_tokenizer({"kind": "char", "vocab_size": 65}) == "char (65 characters)"
    assert describe_tokenizer({"kind": "bpe", "encoding": "gpt2", "vocab_size": 50257}) == \
        "BPE gpt2 (50,257 tokens)"


def test_describe_model():
    assert describe_model(RECORD) == ("6 layers, 4 heads, embedding 128, context 256, "
                                      "1,230,976 parameters, tokenizer char (65 characters), "
                                      "trained 2,000 steps")
    bpe = {**RECORD, "tokenizer": {"kind": "bpe", "encoding": "gpt2", "vocab_size": 50257}}
    assert "tokenizer BPE gpt2 (50,257 tokens)" in describe_model(bpe)
    # An old or partial record still gives a line, with ? for what it lacks.
    assert describe_model({"model": {"step": 5}}) == (
        "? layers, ? heads, embedding ?, context ?, ? parameters, trained 5 steps")


def test_the_report_imports_neither_torch_nor_gradio():
    code = ("import sys, gptmini.report; "
            "print(sorted(m for m in ('torch', 'gradio', 'numpy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_export import build_tiny_export

    return build_tiny_export(tmp_path_factory.mktemp("report"))


def test_the_cli_the_app_and_the_readme_show_the_same_numbers(tiny, tmp_path, capsys):
    from gptmini.app.page import evaluate
    from gptmini.app.views import model_markdown, validation_markdown
    from gptmini.cli import main
    from gptmini.inference.loading import load_export

    exported = load_export(tiny.directory)
    record = exported.record
    readme = (tiny.directory / "README.md").read_text()
    assert main(["info", "--export-dir", str(tiny.directory)]) == 0
    info = capsys.readouterr().out
    app_model = f"{model_markdown(exported)}\n\n{validation_markdown(exported)}"

    # The validation metrics of the export: every formatted value, everywhere.
    rows = metric_rows(record["metrics"])
    assert ("BPC", "1.5000 bits/char") in rows and ("tokens predicted", "100") in rows
    for label, value in rows:
        assert f"| {label} | {value} |" in readme
        assert f"| {label} | {value} |" in app_model
        assert f"{label} {value}" in info or f"{value} {label}" in info
    # The model: one line, the same in all three.
    line = describe_model(record)
    assert "trained 7 steps" in line and f"{tiny.model.num_parameters():,} parameters" in line
    assert line in readme and line in info and line in app_model

    # Scoring a text: `gptmini evaluate` and the app's Evaluate tab.
    text = "ROMEO:\nThou art the king, sweet lord; what night is this?\n"
    path = tmp_path / "text.txt"
    path.write_text(text)
    assert main(["evaluate", str(path), "-q", "--json", "--export-dir",
                 str(tiny.directory)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(path), "-q", "--export-dir", str(tiny.directory)]) == 0
    shown = capsys.readouterr().out
    table, _, app_metrics = evaluate(exported, text)
    # The app sums per-token losses, the CLI whole windows: equal to float rounding.
    assert app_metrics == pytest.approx(metrics, rel=1e-6)
    assert metric_rows(app_metrics) == metric_rows(metrics)
    assert shown == f"{path}:\n{metrics_text(metrics)}\n"
    assert table == metrics_markdown(app_metrics)
    for label, value in metric_rows(metrics):
        assert f"| {label} | {value} |" in table
        assert any(line.split() == [*label.split(), *value.split()]
                   for line in shown.splitlines())


def test_each_protocol_of_evaluate_json_reads_back_under_the_bare_keys():
    sliding = {**METRICS, "nll": 1.4, "bpc": 2.0}
    train = {**METRICS, "nll": 1.2, "tokens": 1003853, "chars": 1003853}
    whole = {**METRICS, **with_prefix(sliding, "sliding_"), **with_prefix(train, "train_")}
    assert "sliding_bpc" in whole and "train_tokens" in whole
    assert protocol_metrics(whole, "") == METRICS
    assert protocol_metrics(whole, "sliding_") == sliding
    assert protocol_metrics(whole, "train_") == train
    assert metrics_line(whole) == metrics_line(METRICS)  # the headline, the others left out
