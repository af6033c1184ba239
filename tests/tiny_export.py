"""A tiny model's checkpoint and export directory, built in seconds for the tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from gptmini.data.tokenizers import CharTokenizer
from gptmini.export.writer import export
from gptmini.model import GPT
from gptmini.training.checkpoint import save_checkpoint
from helpers import make_corpus, model_config


@dataclass
class TinyExport:
    directory: Path
    checkpoint: Path
    model: GPT
    tokenizer: CharTokenizer


def build_tiny_export(root: Path, block_size: int = 24, seed: int = 0) -> TinyExport:
    """A random-weight char model on make_corpus's characters, exported with logs."""
    torch.manual_seed(seed)
    tok = CharTokenizer(make_corpus(200))
    cfg = model_config(block_size=block_size, n_layer=2, n_head=2, n_embd=16)
    model = GPT(cfg, tok.vocab_size).eval()
    root.mkdir(parents=True, exist_ok=True)
    ckpt = root / "ckpt.pt"
    save_checkpoint(ckpt, model, cfg, {**tok.definition(), "dtype": "uint16"}, step=7)
    metrics = root / "evaluate.json"
    metrics.write_text(json.dumps({"bpc": 1.5, "nll": 1.0, "perplexity": 2.7,
                                   "accuracy": 0.25, "tokens": 100, "chars": 100,
                                   "nats_per_char": 1.0}))
    train_log = root / "train_log.csv"
    train_log.write_text("step,loss,lr\n0,3.5,0.001\n1,3.4,0.001\n")
    eval_log = root / "eval_log.csv"
    eval_log.write_text("step,train_loss,val_loss\n0,3.5,3.6\n1,3.3,3.4\n")
    directory = root / "export"
    export(ckpt, metrics, directory, train_log=train_log, eval_log=eval_log)
    return TinyExport(directory, ckpt, model, tok)


def generated(model, tokenizer, prompt, sampling) -> str:
    """The whole generated text at once (the library streams it)."""
    from gptmini.inference.generation import stream

    return "".join(stream(model, tokenizer, prompt, sampling))
