"""The training checkpoint: save it atomically, load it safely, rebuild the model from it."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gptmini.atomic import atomic_path
from gptmini.config import TrainConfig
from gptmini.model import GPT, GPTConfig


def save_checkpoint(path: str | Path, model: GPT, optimizer: torch.optim.Optimizer,
                    model_config: GPTConfig, train_config: TrainConfig,
                    tokenizer: dict[str, Any], step: int) -> None:
    """Everything needed to rebuild and continue the model, in plain tensors and
    containers, so that it loads with ``torch.load(weights_only=True)``."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "model_config": model_config.to_dict(),
        "train_config": asdict(train_config),
        "tokenizer": tokenizer,
        "step": step,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    # weights_only: a checkpoint never runs code when loaded.
    return torch.load(path, map_location=device, weights_only=True)


def model_from_checkpoint(ckpt: dict[str, Any]) -> GPT:
    model = GPT(GPTConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def weights_sha256(model: torch.nn.Module) -> str:
    """A hash of the weights alone (names, dtypes, shapes, values), independent of how a
    file was serialised: equal hashes mean bit-identical models."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
