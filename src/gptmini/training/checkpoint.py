"""The final checkpoint: what its readers (the evaluate and export stages) need, and nothing
else: the weights, the model's configuration, the tokenizer definition and the step.
Saved atomically, loaded with ``torch.load(weights_only=True)`` (no code runs on load), and
the model is rebuilt from it as nanoGPT does with its ``model_args``. The optimizer and
every random generator live in the resume state (`gptmini.training.resume`), not here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gptmini.core.atomic import write_torch
from gptmini.core.config import ModelConfig
from gptmini.model import GPT


def save_checkpoint(path: str | Path, model: GPT, config: ModelConfig,
                    tokenizer: dict[str, Any], step: int) -> None:
    state = {
        "model": model.state_dict(),
        "model_config": config.model_dump(),
        "tokenizer": tokenizer,  # its definition; "vocab_size" sizes the model
        "step": step,
    }
    write_torch(path, state)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    # weights_only: a checkpoint never runs code when loaded.
    return torch.load(path, map_location=device, weights_only=True)


def model_from_checkpoint(ckpt: dict[str, Any]) -> GPT:
    model = GPT(ModelConfig(**ckpt["model_config"]), ckpt["tokenizer"]["vocab_size"])
    model.load_state_dict(ckpt["model"])
    return model.eval()
