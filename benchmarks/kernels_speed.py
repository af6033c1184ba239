"""`train.kernels: native` against the pinned default: the project's training step in two
processes, one on the pinned AVX2 kernel paths (the reference bits), one on the CPU's own
(`gptmini.core.numerics.native_kernels_env`), alternated in the same run.

    python benchmarks/kernels_speed.py            # 10 timed steps per process, 2 rounds
    python benchmarks/kernels_speed.py --quick    # 4 timed steps per process, 2 rounds

It prints each side's median step, the ATen path each ran on, and the gain (pinned step
time / native step time). Goal, exit 1 when missed: the native step at least 0.9x as fast
as the pinned one on every CPU (on an AVX2-only CPU both run the same kernels, so the
opt-in must cost nothing beyond noise; where the CPU has AVX-512 it is the screens' gain).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import _results

GOAL = 0.9  # native speed / pinned speed, at least


def worker(steps: int, warmup: int) -> None:
    """One side: the project's step (params.yaml's recipe) timed in this process."""
    import numpy as np
    import torch
    from train_throughput import project_run

    from gptmini.core.config import TrainConfig, load_params
    from gptmini.core.numerics import kernels

    params = load_params("params.yaml")
    torch.set_num_threads(params.train.threads or os.cpu_count() or 1)
    cfg = TrainConfig(**{**params.train.model_dump(), "warmup_steps": 1, "eval_interval": 10**6,
                         "eval_iters": 1, "checkpoint_interval": 10**6, "kernels": "pinned"})
    tokens_file = Path("data/tokens/train.bin")
    tokens = (np.memmap(tokens_file, dtype=np.uint16, mode="r") if tokens_file.exists()
              else np.random.default_rng(0).integers(0, 65, size=1_000_000).astype(np.uint16))
    _, rates = project_run(params.model, 65, tokens, cfg, warmup + steps, torch.device("cpu"),
                           torch.float32)
    tokens_per_step = cfg.batch_size * params.model.block_size
    ms = statistics.median(tokens_per_step / r * 1000 for r in rates[warmup:])
    print(json.dumps({"kernels": kernels(), "path": torch.backends.cpu.get_cpu_capability(),
                      "ms": ms}))


def side(kind: str, steps: int, warmup: int) -> dict:
    from gptmini.core.numerics import KERNELS_ENV, PINS, native_kernels_env

    env = {k: v for k, v in os.environ.items() if k not in PINS and k != KERNELS_ENV}
    if kind == "native":
        env = native_kernels_env(env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, ["src", env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, __file__, "--worker", "--steps", str(steps),
                          "--warmup", str(warmup)], env=env, check=True, text=True,
                         capture_output=True, timeout=900).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if result["kernels"] != kind:
        raise RuntimeError(f"the {kind} side ran on {result['kernels']} kernels")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per process")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternate the two sides this many times, so that a change in "
                             "machine load hits both alike")
    parser.add_argument("--quick", action="store_true", help="4 timed steps, 2 rounds")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    _results.add_json_option(parser)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.rounds = 4, 1, 2
    if args.worker:
        worker(args.steps, args.warmup)
        return

    from gptmini.core.numerics import cpu_model, cpu_vendor

    runs: dict[str, list[dict]] = {"pinned": [], "native": []}
    for _ in range(args.rounds):
        for kind in runs:
            runs[kind].append(side(kind, args.steps, args.warmup))
    ms = {kind: statistics.median(r["ms"] for r in results) for kind, results in runs.items()}
    print(f"CPU: {cpu_vendor()}, {cpu_model()}; the train step of params.yaml, "
          f"{args.steps} timed steps x {args.rounds} rounds per side")
    for kind, results in runs.items():
        print(f"{kind:<8} ATen path {results[0]['path']:<10} {ms[kind]:>9.1f} ms/step")
    gain = ms["pinned"] / ms["native"]
    met = gain >= GOAL
    print(f"native speed / pinned speed: {gain:.2f}x (goal >= {GOAL:g}x: "
          f"{'met' if met else 'MISSED'})")
    _results.write(args.json, "kernels_speed", args,
                   {"pinned_ms": ms["pinned"], "native_ms": ms["native"],
                    "pinned_path": runs["pinned"][0]["path"],
                    "native_path": runs["native"][0]["path"]},
                   f"native speed / pinned speed >= {GOAL:g}", met)
    sys.stdout.flush()
    if not met:
        sys.exit(1)


if __name__ == "__main__":
    main()
