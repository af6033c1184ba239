"""The export runs with torch alone, in a fresh process without this project on the path."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from gptmini.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from gptmini.config import TrainConfig
from gptmini.export import export
from gptmini.model import GPT, GPTConfig
from gptmini.tokenizer import CharTokenizer
from gptmini.train import make_optimizer

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
try:
    import gptmini  # noqa: F401
    print("gptmini importable")
except ImportError:
    print("gptmini not importable")
"""


def test_export_loads_in_a_fresh_process_and_matches_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    tok = CharTokenizer("abcdefgh ,.\n")
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=24, n_layer=2, n_head=2, n_embd=16)
    model = GPT(cfg)
    ckpt_path = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt_path, model, make_optimizer(model, TrainConfig(), torch.device("cpu")),
                    cfg, TrainConfig(), {**tok.definition(), "dtype": "uint16"}, step=7)
    metrics = tmp_path / "evaluate.json"
    metrics.write_text(json.dumps({"bpc": 1.5, "nll": 1.0}))
    record = export(ckpt_path, metrics, tmp_path / "export")
    assert record["model"]["parameters"] == model.num_parameters()
    assert record["model"]["step"] == 7

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
