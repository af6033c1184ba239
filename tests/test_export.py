"""The export runs with torch alone, in a fresh process without this project on the path."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from gptmini.data.tokenizers import CharTokenizer
from gptmini.export.writer import USAGE, export
from gptmini.model import GPT
from gptmini.report import describe_model, metrics_markdown
from gptmini.training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from helpers import model_config, needs_tiktoken

STANDALONE = r"""
import json, sys, torch
assert "gptmini" not in sys.modules
model = torch.jit.load(sys.argv[1] + "/model.ts")
tok = json.load(open(sys.argv[1] + "/tokenizer.json"))
stoi = {c: i for i, c in enumerate(tok["vocab"])}
ids = torch.tensor([[stoi[c] for c in sys.argv[2]]])
with torch.no_grad():
    torch.save(model(ids), sys.argv[3])
metrics = json.load(open(sys.argv[1] + "/evaluation_metrics.json"))
print(metrics["metrics"]["bpc"])
"""


def test_export_loads_in_a_fresh_process_and_matches_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    tok = CharTokenizer("abcdefgh ,.\n")
    cfg = model_config(block_size=24, n_layer=2, n_head=2, n_embd=16)
    model = GPT(cfg, tok.vocab_size)
    ckpt_path = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt_path, model, cfg, {**tok.definition(), "dtype": "uint16"}, step=7)
    metrics = tmp_path / "evaluate.json"
    metrics.write_text(json.dumps({"bpc": 1.5, "nll": 1.0}))
    record = export(ckpt_path, metrics, tmp_path / "export")
    assert record["model"]["parameters"] == model.num_parameters()
    assert record["model"]["step"] == 7
    # The record's config rebuilds the model: the model section and the vocabulary size.
    config = dict(record["model"]["config"])
    assert config.pop("vocab_size") == tok.vocab_size
    rebuilt = GPT(model_config(**config), tok.vocab_size)
    rebuilt.load_state_dict(model.state_dict())
    assert json.loads((tmp_path / "export" / "evaluation_metrics.json").read_text()) == record

    prompt = "abc defg, hab.\nch"
    out = tmp_path / "logits.pt"
    script = tmp_path / "standalone.py"
    script.write_text(STANDALONE)
    # -I: isolated mode, neither the cwd nor PYTHONPATH nor user site on sys.path; and a
    # cwd outside the repo, so nothing of this project can be imported.
    proc = subprocess.run([sys.executable, "-I", str(script), str(tmp_path / "export"), prompt,
                           str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "1.5"
    expected = model_from_checkpoint(load_checkpoint(ckpt_path))(
        torch.tensor([tok.encode(prompt)])).detach()
    assert torch.allclose(torch.load(out), expected, atol=1e-5)


# Runs in a fresh `python -I`, with every import of this project refused.
STANDALONE_USE = r"""
import json, sys


class NoProject:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "gptmini":
            raise ImportError("this project's code must not be needed")


sys.meta_path.insert(0, NoProject())
import torch

directory, prompt, out = sys.argv[1:4]
program = torch.export.load(directory + "/model.pt2").module()
scripted = torch.jit.load(directory + "/model.ts")
tok = json.load(open(directory + "/tokenizer.json"))
if tok["kind"] == "char":
    stoi = {c: i for i, c in enumerate(tok["vocab"])}
    encode = lambda s: [stoi[c] for c in s]
    decode = lambda ids: "".join(tok["vocab"][i] for i in ids)
else:
    import tiktoken
    enc = tiktoken.get_encoding(tok["encoding"])
    encode, decode = enc.encode_ordinary, enc.decode
ids = torch.tensor([encode(prompt)])
window = ids[:, -scripted.block_size:]
result = {}
with torch.no_grad():
    for t in (1, 2, 5, window.size(1)):
        result[f"pt2_{t}"] = program(window[:, :t])
        result[f"ts_{t}"] = scripted(window[:, :t])
    result["pt2_batch"] = program(window[:, :7].repeat(3, 1))
    result["sampled"] = scripted.generate(ids, 60, 0.9, 5, 0.95, 42)
    result["greedy"] = scripted.generate(ids, 60, 0.0, 0, 1.0, -1)
    # Generation on the torch.export programs, as the export's README shows it.
    prefill = torch.export.load(directory + "/prefill.pt2").module()
    step = torch.export.load(directory + "/decode.pt2").module()
    context, keep = scripted.block_size, max(1, 3 * scripted.block_size // 4)
    window = ids[:, -context:].repeat(2, 1)  # a batch of two
    logits, cache = prefill(window)
    new = []
    for _ in range(60):
        next_id = logits.argmax(dim=-1, keepdim=True)
        new.append(next_id)
        window = torch.cat([window, next_id], dim=1)
        if window.size(1) <= context:
            logits, cache = step(next_id, cache)
        else:
            window = window[:, -keep:]
            logits, cache = prefill(window)
    result["pt2_greedy"] = torch.cat(new, dim=1)
torch.save(result, out)
print(decode(result["sampled"][0].tolist()))
"""


def run_standalone(tmp_path, export_dir, prompt: str, env: dict[str, str] | None = None):
    script = tmp_path / "use_export.py"
    script.write_text(STANDALONE_USE)
    out = tmp_path / "result.pt"
    proc = subprocess.run([sys.executable, "-I", str(script), str(export_dir), prompt, str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=180,
                          env={"PATH": "/usr/bin:/bin", **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return torch.load(out), proc.stdout


def test_pt2_and_scripted_generate_in_a_fresh_process_match_the_library(tmp_path):
    from gptmini.inference.generation import Sampling, token_stream
    from tiny_export import build_tiny_export

    tiny = build_tiny_export(tmp_path / "tiny", block_size=24)
    model = model_from_checkpoint(load_checkpoint(tiny.checkpoint))
    prompt = "ROMEO:\nThou art the king, sweet lord"  # longer than the context of 24
    result, stdout = run_standalone(tmp_path, tiny.directory, prompt)

    ids = tiny.tokenizer.encode(prompt)[-24:]
    with torch.no_grad():
        for t in (1, 2, 5, 24):
            expected = model(torch.tensor([ids[:t]]))
            assert torch.allclose(result[f"pt2_{t}"], expected, atol=1e-5), t
            assert torch.allclose(result[f"ts_{t}"], expected, atol=1e-5), t
        batch = model(torch.tensor([ids[:7]] * 3))
    assert torch.allclose(result["pt2_batch"], batch, atol=1e-5)
    # Scripted generation in torch alone = the library's, token for token (60 new tokens
    # after a full window: the cache restarts several times).
    full_prompt = tiny.tokenizer.encode(prompt)
    sampled = list(token_stream(model, full_prompt[-24:], Sampling(60, 0.9, 5, 0.95, seed=42)))
    assert result["sampled"][0].tolist() == sampled
    assert stdout.rstrip("\n") == tiny.tokenizer.decode(sampled).rstrip("\n")
    greedy = list(token_stream(model, full_prompt[-24:], Sampling(60, temperature=0.0)))
    assert result["greedy"][0].tolist() == greedy
    assert result["pt2_greedy"].tolist() == [greedy, greedy]


def test_export_holds_the_training_logs_and_a_readme(tmp_path):
    from tiny_export import build_tiny_export

    tiny = build_tiny_export(tmp_path / "tiny")
    names = sorted(p.name for p in tiny.directory.iterdir())
    assert names == ["README.md", "decode.pt2", "eval_log.csv", "evaluation_metrics.json", "hf",
                     "model.pt2", "model.ts", "prefill.pt2", "step.onnx", "tokenizer.json",
                     "train_log.csv"]
    readme = (tiny.directory / "README.md").read_text()
    assert readme.startswith(USAGE) and "model.generate(" in readme
    record = json.loads((tiny.directory / "evaluation_metrics.json").read_text())
    assert "\n## This model\n" in readme
    assert f"\n{describe_model(record)}.\n" in readme
    assert metrics_markdown(record["metrics"]) in readme
    assert "| BPC | 1.5000 bits/char |" in readme and "trained 7 steps" in readme


def test_the_export_is_the_same_bytes_for_the_same_inputs(tmp_path):
    from tiny_export import build_tiny_export

    first = build_tiny_export(tmp_path / "a").directory
    second = build_tiny_export(tmp_path / "b").directory
    names = sorted(str(p.relative_to(first)) for p in first.rglob("*") if p.is_file())
    assert {"model.ts", "model.pt2", "prefill.pt2", "decode.pt2", "step.onnx",
            "hf/model.safetensors"} <= set(names)
    assert names == sorted(str(p.relative_to(second)) for p in second.rglob("*") if p.is_file())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_export_stage_exports_and_logs_to_the_pipeline_run(tmp_path, monkeypatch, capsys):
    import shutil

    import mlflow

    from gptmini.core import paths
    from gptmini.export.stage import export_stage
    from gptmini.tracking.run_id import write_run_id
    from tiny_export import build_tiny_export

    tiny = build_tiny_export(tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    for source, target in ((tiny.checkpoint, paths.CHECKPOINT),
                           (tmp_path / "tiny" / "evaluate.json", paths.EVALUATE_METRICS),
                           (tmp_path / "tiny" / "train_log.csv", paths.TRAIN_LOG),
                           (tmp_path / "tiny" / "eval_log.csv", paths.EVAL_LOG)):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "export-test")
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("export-test",
                                          artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment, run_name="train") as run:
        pass
    write_run_id(run.info.run_id)

    record = export_stage()
    out = capsys.readouterr().out
    assert f"exported to {paths.EXPORT_DIR}/: {describe_model(record)}" in out
    assert (paths.EXPORT_DIR / "README.md").read_bytes() == \
        (tiny.directory / "README.md").read_bytes()
    # The pipeline's run was reopened, not a new one started.
    assert [r.info.run_id for r in mlflow.search_runs([experiment], output_format="list")] \
        == [run.info.run_id]
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert logged == {"evaluation_metrics.json", "export"}
    exported = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "export")}
    assert {"export/model.ts", "export/README.md", "export/train_log.csv"} <= exported
    # ... and the export as an MLflow Model of that run, version 1 of `gptmini`, champion.
    version = mlflow.MlflowClient().get_model_version_by_alias("gptmini", "champion")
    assert str(version.version) == "1" and version.run_id == run.info.run_id
    assert version.tags["val_bpc"] == "1.5"
    assert "registered gptmini version 1 (val BPC 1.5000; no champion before): now " \
        "@champion" in out
    # Nothing of MLflow's went into the export.
    assert sorted(p.name for p in paths.EXPORT_DIR.iterdir()) == sorted(
        p.name for p in tiny.directory.iterdir())


@needs_tiktoken
def test_bpe_export_is_usable_with_torch_and_tiktoken_alone(tmp_path):
    import os

    from gptmini.data.tokenizers import BpeTokenizer
    from gptmini.inference.generation import Sampling, token_stream

    torch.manual_seed(0)
    tok = BpeTokenizer("gpt2")
    cfg = model_config(block_size=16, n_layer=1, n_head=2, n_embd=16)
    model = GPT(cfg, tok.vocab_size).eval()
    ckpt_path = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt_path, model, cfg, {**tok.definition(), "dtype": "uint32"}, step=1)
    metrics = tmp_path / "evaluate.json"
    metrics.write_text(json.dumps({"bpc": 1.5}))
    export(ckpt_path, metrics, tmp_path / "export")
    assert json.loads((tmp_path / "export" / "tokenizer.json").read_text())["encoding"] == "gpt2"
    prompt = "To be, or not to be, that is the question: whether 'tis nobler"
    result, stdout = run_standalone(tmp_path, tmp_path / "export", prompt,
                                    env={"TIKTOKEN_CACHE_DIR": os.environ["TIKTOKEN_CACHE_DIR"]})
    ids = tok.encode(prompt)[-16:]
    sampled = list(token_stream(model, ids, Sampling(60, 0.9, 5, 0.95, seed=42)))
    assert result["sampled"][0].tolist() == sampled
    assert stdout.rstrip("\n") == tok.decode(sampled).rstrip("\n")
