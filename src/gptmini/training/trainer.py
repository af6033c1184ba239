"""The training loop: AdamW or Muon, linear warmup then cosine or warmup-stable-decay,
gradient clipping, mixed precision, periodic train/val loss estimates, optional
DistributedDataParallel, and a resumable state that restores every random number
generator, so that a run killed at any moment and resumed ends with the same weights,
bit for bit, as one never stopped.

The loop's history (step, loss, learning rate) is deterministic; timings (tokens/s, wall
seconds) are reported to the caller separately and never enter the history.
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gptmini.core.config import TrainConfig
from gptmini.core.device import Distributed, autocast, seed_everything
from gptmini.core.progress import progress_bar
from gptmini.core.stage import Interrupted
from gptmini.model import GPT, next_token_loss
from gptmini.training.batches import SAMPLERS, BatchSampler
from gptmini.training.muon import Muon, ns_dtype_for


def lr_at(step: int, cfg: TrainConfig, steps: int) -> float:
    """The learning rate of `step` for a peak of cfg.learning_rate: linear warmup, then
    cosine decay to min_lr at the last of `steps` (schedule: cosine), or a flat stretch
    and a linear or 1-sqrt decay to min_lr over the last decay_fraction of the steps
    (schedule: wsd, warmup-stable-decay). Every parameter group follows it in proportion
    to its peak."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "wsd":
        decay_steps = max(1, round(cfg.decay_fraction * steps))
        progress = min(max((step - (steps - decay_steps)) / decay_steps, 0.0), 1.0)
        shape = 1.0 - (math.sqrt(progress) if cfg.decay_shape == "sqrt" else progress)
    else:
        progress = (step - cfg.warmup_steps) / max(1, steps - cfg.warmup_steps)
        shape = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.min_lr + shape * (cfg.learning_rate - cfg.min_lr)


def muon_momentum_at(step: int, cfg: TrainConfig) -> float:
    """Muon's momentum at `step`: from 0.85 up to muon_momentum, linearly over the first
    muon_momentum_warmup steps (modded-nanogpt's warmup: less momentum while the weights
    move fast)."""
    progress = min(step / cfg.muon_momentum_warmup, 1.0)
    return 0.85 + progress * (cfg.muon_momentum - 0.85)


def make_ema(model: GPT, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of `model`'s weights (torch's AveragedModel). Its
    decay starts low, (1 + n) / (10 + n) at the n-th update, so that the random initial
    weights fade within the first steps instead of weighing decay ** steps at the end."""
    from torch.optim.swa_utils import AveragedModel

    def average(averaged: torch.Tensor, current: torch.Tensor,
                n: torch.Tensor) -> torch.Tensor:
        d = torch.clamp((1 + n) / (10 + n), max=decay).to(averaged.dtype)
        return averaged * d + current * (1 - d)

    ema = AveragedModel(model, avg_fn=average)
    ema.module.eval()  # it is only evaluated and saved, never trained
    return ema


class TrainingObjective(torch.nn.Module):
    """The training loss when it is more than the model's own: the mean cross-entropy plus
    PaLM's z-loss (`z_loss` times the mean squared logsumexp of the logits, which holds the
    softmax's normaliser near 1) and/or a training-only head for the token after next
    (`next_next` times its cross-entropy). A module, so that DistributedDataParallel and
    torch.compile wrap it as they wrap the model; the head (`ahead`) is never part of the
    model, so it is never saved, evaluated or exported."""

    def __init__(self, model: GPT, z_loss: float, next_next: float) -> None:
        super().__init__()
        self.model, self.z_loss, self.next_next = model, z_loss, next_next
        width = model.lm_head.weight.size(1)
        self.ahead = (torch.nn.Sequential(torch.nn.Linear(width, width),
                                          torch.nn.LayerNorm(width))
                      if next_next > 0 else None)
        if self.ahead is not None:
            torch.nn.init.normal_(self.ahead[0].weight, std=0.02)
            torch.nn.init.zeros_(self.ahead[0].bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hidden = self.model.hidden(idx)
        logits = self.model.lm_head(hidden)
        loss = next_token_loss(logits, targets)
        if self.z_loss > 0:
            loss = loss + self.z_loss * torch.logsumexp(logits.float(), dim=-1).pow(2).mean()
        if self.ahead is not None:
            after_next = self.model.lm_head(self.ahead(hidden[:, :-1]))
            loss = loss + self.next_next * next_token_loss(after_next, targets[:, 1:])
        return loss


def make_objective(model: GPT, cfg: TrainConfig) -> TrainingObjective | None:
    """train.z_loss and train.next_next_loss's objective; None when both are off (the
    model's own loss)."""
    if cfg.z_loss == 0 and cfg.next_next_loss == 0:
        return None
    if model.uses_chunked_head:
        raise ValueError(f"train.z_loss = {cfg.z_loss} and train.next_next_loss = "
                         f"{cfg.next_next_loss} need the plain head: this vocabulary goes "
                         f"through the chunked one")
    return TrainingObjective(model, cfg.z_loss, cfg.next_next_loss)


def seq_len_at(step: int, cfg: TrainConfig, block_size: int) -> int:
    """The tokens of each window that `step` trains on: all of them, or during the first
    seq_warmup_steps a prefix rising linearly from block_size / 8, in multiples of 8."""
    if step >= cfg.seq_warmup_steps:
        return block_size
    shortest = max(1, block_size // 8)
    grown = (block_size - shortest) * step // cfg.seq_warmup_steps
    return min(block_size, shortest + grown // 8 * 8)


class Optimizers:
    """The torch optimizers of one model, stepped together: AdamW alone, or torch.optim.Muon
    for the blocks' 2-D weights beside AdamW for the rest. Each parameter group keeps its
    peak rate in "peak_lr"; `set_lr` scales every group by the schedule's fraction.

    The optimizers in `one_thread` step on a single thread: Muon with bf16 Newton-Schulz on
    a CPU, whose small bf16 matmuls split across threads mostly wait; in float32 two threads
    are faster (benchmarks/optimizer_speed.py measures the step, docs/speed.md the figures)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer],
                 one_thread: tuple[torch.optim.Optimizer, ...] = ()) -> None:
        self.optimizers, self.one_thread = optimizers, one_thread
        for opt in optimizers:
            for group in opt.param_groups:
                group.setdefault("peak_lr", group["lr"])

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def set_lr(self, fraction: float) -> None:
        for group in self.param_groups:
            group["lr"] = group["peak_lr"] * fraction

    def set_muon_momentum(self, momentum: float) -> None:
        for opt in self.optimizers:
            if isinstance(opt, torch.optim.Muon):
                for group in opt.param_groups:
                    group["momentum"] = momentum

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            if opt in self.one_thread and torch.get_num_threads() > 1:
                threads = torch.get_num_threads()
                torch.set_num_threads(1)
                try:
                    opt.step()
                finally:
                    torch.set_num_threads(threads)
            else:
                opt.step()

    def state_dict(self) -> list[dict[str, Any]]:
        return [opt.state_dict() for opt in self.optimizers]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        if len(states) != len(self.optimizers):
            raise ValueError(f"the state holds {len(states)} optimizers, this run has "
                             f"{len(self.optimizers)}")
        for opt, state in zip(self.optimizers, states, strict=True):
            opt.load_state_dict(state)


def make_optimizer(model: GPT, cfg: TrainConfig, device: torch.device,
                   dtype: torch.dtype = torch.float32,
                   extra: torch.nn.Module | None = None) -> Optimizers:
    """train.optimizer = adamw: AdamW with weight decay on the 2-D weights (matmuls,
    embeddings) only. muon: torch's Muon (Nesterov momentum, Newton-Schulz orthogonalised
    updates, decoupled weight decay; the iterations in the device's native dtype,
    `gptmini.training.muon`) for the 2-D weights inside the blocks,
    and AdamW at learning_rate for the embeddings (the tied head), gains and biases.
    `extra` (a training-only head) goes with AdamW."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if extra is not None:
        params += [(f"extra.{n}", p) for n, p in extra.named_parameters()]
    muon: list[torch.optim.Optimizer] = []
    ns_dtype = ns_dtype_for(device, dtype)
    if cfg.optimizer == "muon":
        hidden = {n for n, p in params if p.dim() == 2 and n.startswith("blocks.")}
        muon.append(Muon([p for n, p in params if n in hidden], lr=cfg.muon_lr,
                          momentum=cfg.muon_momentum, weight_decay=cfg.muon_weight_decay,
                          ns_dtype=ns_dtype))
        params = [(n, p) for n, p in params if n not in hidden]
    groups = [
        {"params": [p for _, p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    adamw = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                              fused=device.type == "cuda")
    one_thread = device.type == "cpu" and ns_dtype == torch.bfloat16
    return Optimizers([adamw, *muon], one_thread=tuple(muon) if one_thread else ())


@dataclass
class TrainResult:
    steps: int
    final_train_loss: float
    final_val_loss: float
    best_val_loss: float
    best_step: int
    wall_seconds: float       # volatile: never written into an artifact
    tokens_per_second: float  # volatile, likewise
    history: list[dict[str, float]] = field(default_factory=list)  # step, loss, lr
    evals: list[dict[str, float]] = field(default_factory=list)    # step, train/val loss

    def summary(self) -> dict[str, float | int]:
        """What the run reached: the same figures on every rerun with the same inputs."""
        return {"steps": self.steps, "train_loss": self.final_train_loss,
                "val_loss": self.final_val_loss, "best_val_loss": self.best_val_loss,
                "best_step": self.best_step}

    def timings(self) -> dict[str, float]:
        return {"wall_seconds": self.wall_seconds, "tokens_per_second": self.tokens_per_second}


StepLogger = Callable[[dict[str, float]], None]


class NonFiniteLoss(FloatingPointError):
    """A non-finite loss, gradient norm or weight, caught before it reaches the weights
    (the optimizer step) or a saved state."""

    def __init__(self, step: int, value: float, what: str = "loss") -> None:
        super().__init__(f"non-finite {what} {value} at step {step}")
        self.step = step


class Trainer:
    """Trains `model` in place for `steps` optimizer steps (`Params.train_steps`: what
    train.budget_chars buys); `state_dict()` / `load_state_dict()` make it resumable."""

    def __init__(self, model: GPT, train_tokens: np.ndarray, val_tokens: np.ndarray,
                 cfg: TrainConfig, device: torch.device, *, steps: int,
                 dtype: torch.dtype = torch.float32,
                 dist_info: Distributed | None = None) -> None:
        if steps <= cfg.warmup_steps:
            raise ValueError(f"{steps} steps leave no room after {cfg.warmup_steps} of warmup")
        self.cfg, self.steps, self.device, self.dtype = cfg, steps, device, dtype
        self.dist = dist_info or Distributed()
        seed_everything(cfg.seed + self.dist.rank)
        self.model = model.to(device).train()
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.objective = make_objective(self.model, cfg)
        if self.objective is not None:
            self.objective.to(device).train()
        self.step_model: torch.nn.Module = self.objective or self.model
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.step_model = DistributedDataParallel(
                self.step_model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile:
            self.step_model = torch.compile(self.step_model)
        block, bs, seed = model.block_size, cfg.batch_size, cfg.seed + 1000 * self.dist.rank
        self.samplers = {"train": SAMPLERS[cfg.data_order](train_tokens, block, bs, seed),
                         "eval_train": BatchSampler(train_tokens, block, bs, seed + 1),
                         "eval_val": BatchSampler(val_tokens, block, bs, seed + 2)}
        self.optimizer = make_optimizer(model, cfg, device, dtype, extra=self._ahead)
        self.ema = make_ema(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.evals: list[dict[str, float]] = []
        self.best_val, self.best_step = math.inf, -1
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.elapsed = 0.0

    @property
    def _ahead(self) -> torch.nn.Module | None:
        """The training-only head of train.next_next_loss (resumed, never saved)."""
        return self.objective.ahead if self.objective is not None else None

    @property
    def evaluated_model(self) -> GPT:
        """The weights the run evaluates, keeps and saves: the moving average when
        train.ema_decay is on, else the trained ones."""
        return self.ema.module if self.ema is not None else self.model

    @torch.inference_mode()
    def estimate_loss(self) -> dict[str, float]:
        model = self.evaluated_model
        model.eval()
        out = {}
        for split in ("train", "val"):
            sampler = self.samplers[f"eval_{split}"]
            losses = []
            for _ in range(self.cfg.eval_iters):
                x, y = sampler.sample(self.device)
                with autocast(self.device, self.dtype):
                    losses.append(model(x, y).item())
            out[split] = self.dist.mean(float(np.mean(losses)), self.device)
        self.model.train()
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs, in plain tensors and containers (weights_only-safe)."""
        np_state = np.random.get_state()
        optional = {"ema": self.ema.state_dict()} if self.ema is not None else {}
        if self._ahead is not None:
            optional["ahead"] = self._ahead.state_dict()
        return {**optional,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "samplers": {k: s.state for k, s in self.samplers.items()},
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []},
            "history": self.history,
            "evals": self.evals,
            "best": {"val": self.best_val, "step": self.best_step, "weights": self.best_weights},
            "elapsed": self.elapsed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self._ahead is not None:
            self._ahead.load_state_dict(state["ahead"])
        for k, s in state["samplers"].items():
            self.samplers[k].state = s
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
        np.random.set_state((rng["numpy"][0], np.asarray(rng["numpy"][1], dtype=np.uint32),
                             *rng["numpy"][2:]))
        if rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.history, self.evals = list(state["history"]), list(state["evals"])
        best = state["best"]
        self.best_val, self.best_step = best["val"], best["step"]
        self.best_weights = best["weights"]
        self.elapsed = state["elapsed"]

    def _evaluate(self, on_eval: StepLogger | None) -> None:
        losses = self.estimate_loss()
        record = {"step": self.step, "train_loss": losses["train"], "val_loss": losses["val"]}
        self.evals.append(record)
        if self.cfg.keep_best and losses["val"] < self.best_val:
            self.best_val, self.best_step = losses["val"], self.step
            self.best_weights = {k: v.detach().to("cpu", copy=True)
                                 for k, v in self.evaluated_model.state_dict().items()}
        if on_eval:
            on_eval(record)

    def run(self, *, on_step: StepLogger | None = None, on_eval: StepLogger | None = None,
            on_checkpoint: Callable[[Trainer], None] | None = None,
            progress: bool = True) -> TrainResult:
        """Train from the current step to self.steps."""
        cfg = self.cfg
        tokens_per_step = cfg.batch_size * self.model.block_size * self.dist.world_size
        batch = self.samplers["train"].sample(self.device)
        start_step, session_start = self.step, time.perf_counter()
        start = session_start - self.elapsed  # the clock counts the steps before a resume too
        # closed when the loop raises too (a stop, a NaN): an open bar would shift the next
        # bar of the process to another line
        with progress_bar(total=self.steps, initial=self.step, desc="train",
                          disable=not (progress and self.dist.is_main)) as bar, \
                self._stop_on_signals():
            self._loop(batch, start, bar, on_step, on_eval, on_checkpoint)
        self._evaluate(on_eval)
        if cfg.keep_best and self.best_weights is not None and self.best_step != self.step:
            self.model.load_state_dict(self.best_weights)
        elif self.ema is not None:
            self.model.load_state_dict(self.ema.module.state_dict())
        now = time.perf_counter()
        return TrainResult(
            steps=self.step, final_train_loss=self.evals[-1]["train_loss"],
            final_val_loss=self.evals[-1]["val_loss"], best_val_loss=self.best_val,
            best_step=self.best_step, wall_seconds=now - start,
            tokens_per_second=(self.step - start_step) * tokens_per_step / (now - session_start),
            history=self.history, evals=self.evals)

    def _loop(self, batch: tuple[torch.Tensor, torch.Tensor], start: float,
              bar: Any, on_step: StepLogger | None,
              on_eval: StepLogger | None,
              on_checkpoint: Callable[[Trainer], None] | None) -> None:
        """The steps of `run`: each checks its loss and gradients before the optimizer
        step and the weights before a state is saved; a stop signal saves and raises."""
        cfg, sampler = self.cfg, self.samplers["train"]
        while self.step < self.steps:
            if self.step % cfg.eval_interval == 0:
                self._evaluate(on_eval)
            lr = lr_at(self.step, cfg, self.steps)
            self.optimizer.set_lr(lr / cfg.learning_rate)
            if cfg.muon_momentum_warmup:
                self.optimizer.set_muon_momentum(muon_momentum_at(self.step, cfg))
            t0 = time.perf_counter()
            x, y = batch
            if cfg.seq_warmup_steps:
                length = seq_len_at(self.step, cfg, x.size(1))
                x, y = x[:, :length], y[:, :length]
            with autocast(self.device, self.dtype):
                # the loss comes out of the (DDP-wrapped) module's forward: see GPT.forward
                loss = self.step_model(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            loss_value = self._finite_loss_and_gradients(loss)  # before the optimizer step
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            # The resume state keeps the sampler as it is *before* the next batch is drawn.
            next_sampler_state = sampler.state
            if self.step + 1 < self.steps:
                batch = sampler.sample(self.device)  # prefetch: overlaps the device's work
            row = {"step": self.step, "loss": loss_value, "lr": lr}
            self.history.append(row)
            if on_step:
                trained = x.numel() * self.dist.world_size
                on_step({**row, "tokens_per_second": trained / (time.perf_counter() - t0)})
            bar.update()
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", refresh=False)
            self.step += 1
            self.elapsed = time.perf_counter() - start
            stop = self._stop_requested()
            if (stop or self.step % cfg.checkpoint_interval == 0) and self.step < self.steps:
                self._require_finite_weights()  # a saved state is never a poisoned one
                if on_checkpoint:
                    live_state = sampler.state
                    sampler.state = next_sampler_state
                    on_checkpoint(self)
                    sampler.state = live_state
                if stop:
                    raise Interrupted(f"training stopped by {signal.Signals(stop).name} at "
                                      f"step {self.step}", stop)

    def _finite_loss_and_gradients(self, loss: torch.Tensor) -> float:
        """The loss (one device sync for it and the gradient norm), after clipping the
        gradients; raises before a non-finite value reaches the optimizer step."""
        trained = self.objective or self.model  # the model, and a training-only head
        params = [p for p in trained.parameters() if p.grad is not None]
        if self.cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        loss_value, norm_value = torch.stack([loss.detach().float(), norm.float()]).tolist()
        if not math.isfinite(loss_value):
            raise NonFiniteLoss(self.step, loss_value)
        if not math.isfinite(norm_value):
            raise NonFiniteLoss(self.step, norm_value, "gradient norm")
        return loss_value

    def _require_finite_weights(self) -> None:
        for name, param in self.model.named_parameters():
            if not torch.isfinite(param).all():
                value = math.nan if torch.isnan(param).any() else math.inf
                raise NonFiniteLoss(self.step, value, f"weight {name}")

    @contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """Ctrl-C (SIGINT) and SIGTERM stop the loop after the step under way, which then
        saves its state (on_checkpoint) and raises `Interrupted`; a second signal stops at
        once. Only the main thread takes signals: elsewhere they keep their handlers."""
        self._stop_signal = 0
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            if self._stop_signal:
                raise KeyboardInterrupt
            self._stop_signal = signum

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _stop_requested(self) -> int:
        """The signal that asked to stop (0: none), agreed by every process, so that all
        of them save the same step."""
        if self.dist.world_size == 1:
            return self._stop_signal
        flag = torch.tensor([self._stop_signal], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())

