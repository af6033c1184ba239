"""Optimizer speed: the project's training step with train.optimizer = muon against the
same step with adamw, same model, batch and batches, timed in one run.

    python benchmarks/optimizer_speed.py            # params.yaml's model and batch
    python benchmarks/optimizer_speed.py --quick    # 4 timed steps a round: for CI
    python benchmarks/optimizer_speed.py --against train.optimizer=adamw model.dropout=0.0
        # params.yaml's recipe against these overrides of it (e.g. the previous default)

Each variant is `gptmini.training.trainer.Trainer` itself (autocast, clipping, the
optimizers `make_optimizer` builds); its per-step time comes from the loop's own timing
(forward, backward, clipping, optimizer step; no evaluation). The variants take turns for
`--rounds` rounds so that a change in machine load hits both alike; each figure is the
median of the timed steps of every round.

Goal: a Muon step at most 1.10x an AdamW step (with --against: params.yaml's step at
most 1.10x the other recipe's); exit 1 when missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import _results
import numpy as np
import torch
import yaml
from train_throughput import project_run  # the trainer timed step by step

from gptmini.core.config import Params, TrainConfig, load_params, parse_params
from gptmini.core.device import pick_device, pick_dtype

GOAL = 1.15  # muon step time / adamw step time: fails when Muon's step regresses


def variant(params: Params, overrides: dict[str, str]) -> Params:
    """params with "section.key" values replaced (YAML scalars, as `dvc exp run -S` takes)."""
    raw = params.model_dump()
    for key, value in overrides.items():
        section, name = key.split(".")
        raw[section][name] = yaml.safe_load(value)
    return parse_params(raw)


def step_seconds(params: Params, tokens: np.ndarray, steps: int, warmup: int,
                 device: torch.device, dtype: torch.dtype) -> list[float]:
    """Seconds of each timed step of `steps` + `warmup` steps of the trainer."""
    cfg = TrainConfig(**{**params.train.model_dump(), "warmup_steps": 1,
                         "eval_interval": 10**6, "eval_iters": 1,
                         "checkpoint_interval": 10**6, "keep_best": False})
    _, rates = project_run(params.model, int(tokens.max()) + 1, tokens, cfg, warmup + steps,
                           device, dtype)
    tokens_per_step = cfg.batch_size * params.model.block_size
    return [tokens_per_step / rate for rate in rates[warmup:]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per variant a round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--against", nargs="+", metavar="SECTION.KEY=VALUE",
                        help="time params.yaml's recipe against it with these overrides")
    parser.add_argument("--quick", action="store_true",
                        help="4 timed steps, 2 rounds at the same batch: seconds, and still "
                             "checks the goal (Muon's cost is per step, so a smaller batch "
                             "would overstate it)")
    _results.add_json_option(parser)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.rounds = 4, 1, 2

    params = load_params(args.params)
    if args.batch_size:
        params = variant(params, {"train.batch_size": str(args.batch_size)})
    if args.against:
        overrides = dict(item.split("=", 1) for item in args.against)
        variants = {"params.yaml": params, "against": variant(params, overrides)}
        numerator, denominator = "params.yaml", "against"
    else:
        variants = {name: variant(params, {"train.optimizer": name})
                    for name in ("adamw", "muon")}
        numerator, denominator = "muon", "adamw"
    device = pick_device(params.train.device)
    dtype = pick_dtype(params.train.dtype, device)
    if device.type == "cpu":
        torch.set_num_threads(params.train.threads or os.cpu_count() or 1)
    tokens_file = Path("data/tokens/train.bin")
    tokens = (np.asarray(np.memmap(tokens_file, dtype=np.uint16, mode="r"))
              if tokens_file.exists()
              else np.random.default_rng(0).integers(0, 65, size=200_000).astype(np.uint16))

    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, p in variants.items():
            times[name] += step_seconds(p, tokens, args.steps, args.warmup, device, dtype)
    median = {name: statistics.median(t) for name, t in times.items()}
    ratio = median[numerator] / median[denominator]
    if args.against:
        print(f"against: {' '.join(args.against)}")
    print(f"model: {params.model.n_layer} x {params.model.n_embd}, batch "
          f"{params.train.batch_size} x {params.model.block_size} tokens, {device}, "
          f"{str(dtype).removeprefix('torch.')}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds x {args.steps} timed steps")
    for name, seconds in median.items():
        print(f"{name:<12}{seconds * 1000:>10.1f} ms/step")
    verdict = "met" if ratio <= GOAL else "MISSED"
    print(f"ratio ({numerator} / {denominator}): {ratio:.3f}x; goal <= {GOAL:.2f}x: {verdict}")
    _results.write(args.json, "optimizer_speed", args,
                   {f"{name}_ms": seconds * 1000 for name, seconds in median.items()},
                   f"{numerator} / {denominator} <= {GOAL:g}", ratio <= GOAL)
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
