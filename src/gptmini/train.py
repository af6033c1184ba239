"""The training loop: AdamW, linear warmup then cosine decay, gradient clipping,
periodic train/val loss estimates, and a checkpoint at the end."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from gptmini.config import TrainConfig
from gptmini.model import GPT, next_token_loss


def pick_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; any other name is used as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but CUDA is not available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("device 'mps' was asked for but MPS is not available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class BatchSampler:
    """Random contiguous windows of a token array (a memmap: nothing is read up front)."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int) -> None:
        if len(tokens) <= block_size:
            raise ValueError(f"{len(tokens)} tokens cannot fill one window of {block_size} + 1")
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.rng = np.random.default_rng(seed)
        self._offsets = np.arange(block_size + 1)

    def sample(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)
        windows = torch.from_numpy(self.tokens[starts[:, None] + self._offsets].astype(np.int64))
        x, y = windows[:, :-1], windows[:, 1:]
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(
                device, non_blocking=True)
        return x.to(device), y.to(device)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to learning_rate, then cosine decay to min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))) * (
        cfg.learning_rate - cfg.min_lr)


def make_optimizer(model: GPT, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on the 2-D weights (matmuls, embeddings) only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                             fused=device.type == "cuda")


@torch.inference_mode()
def estimate_loss(model: GPT, samplers: dict[str, BatchSampler], iters: int,
                  device: torch.device) -> dict[str, float]:
    was_training = model.training
    model.eval()
    out = {}
    for split, sampler in samplers.items():
        losses = [next_token_loss(model(x), y).item()
                  for x, y in (sampler.sample(device) for _ in range(iters))]
        out[split] = float(np.mean(losses))
    model.train(was_training)
    return out


@dataclass
class TrainResult:
    steps: int
    final_train_loss: float
    final_val_loss: float
    wall_seconds: float
    tokens_per_second: float
    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)


StepLogger = Callable[[dict[str, float]], None]


def train(model: GPT, train_tokens: np.ndarray, val_tokens: np.ndarray, cfg: TrainConfig,
          device: torch.device, *, on_step: StepLogger | None = None,
          on_eval: StepLogger | None = None, progress: bool = True
          ) -> tuple[TrainResult, torch.optim.Optimizer]:
    """Train `model` in place for cfg.max_steps steps."""
    seed_everything(cfg.seed)
    model.to(device).train()
    block = model.block_size
    samplers = {"train": BatchSampler(train_tokens, block, cfg.batch_size, cfg.seed),
                "val": BatchSampler(val_tokens, block, cfg.batch_size, cfg.seed + 1)}
    eval_samplers = {"train": BatchSampler(train_tokens, block, cfg.batch_size, cfg.seed + 2),
                     "val": samplers["val"]}
    optimizer = make_optimizer(model, cfg, device)
    result = TrainResult(0, math.nan, math.nan, 0.0, 0.0)
    tokens_per_step = cfg.batch_size * block
    start = time.perf_counter()
    bar = tqdm(range(cfg.max_steps), desc="train", disable=not progress)
    for step in bar:
        if step % cfg.eval_interval == 0 or step == cfg.max_steps - 1:
            losses = estimate_loss(model, eval_samplers, cfg.eval_iters, device)
            record = {"step": step, "train_loss": losses["train"], "val_loss": losses["val"]}
            result.evals.append(record)
            if on_eval:
                on_eval(record)
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        x, y = samplers["train"].sample(device)
        loss = next_token_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        loss_value = loss.item()  # also synchronises the device, so the timing is honest
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"non-finite loss {loss_value} at step {step}")
        dt = time.perf_counter() - t0
        row = {"step": step, "loss": loss_value, "lr": lr,
               "tokens_per_second": tokens_per_step / dt}
        result.history.append(row)
        if on_step:
            on_step(row)
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
    result.steps = cfg.max_steps
    result.wall_seconds = time.perf_counter() - start
    result.tokens_per_second = cfg.max_steps * tokens_per_step / result.wall_seconds
    result.final_train_loss = result.evals[-1]["train_loss"]
    result.final_val_loss = result.evals[-1]["val_loss"]
    return result, optimizer
