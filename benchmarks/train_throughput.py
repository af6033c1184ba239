"""Training throughput: the project's training step against a plain eager fp32 step of the
same model, measured in the same run, as tokens/s, model FLOPs utilisation and a ratio.

    python benchmarks/train_throughput.py                 # seed model, params.yaml sizes
    python benchmarks/train_throughput.py --loss-check 300  # also: fp32 vs bf16 loss curves
    python benchmarks/train_throughput.py --quick           # 3 timed steps each, one round

Goal, exit 1 when missed: on a CPU, the project's float32 step at 50% or more of the
float32 peak it prints (a fixed reference: the two float32 steps are the same computation,
so their ratio is only noise around 1); on CUDA, the project's step at least as fast as
the reference (ratio >= 1.0x: autocast, TF32 and fused AdamW are the project's gain).

The project step is `gptmini.training.trainer.Trainer` itself (autocast, batch prefetch,
fused AdamW and TF32 on CUDA, torch.compile when train.compile is set). The reference is the
textbook loop: stack a batch, forward in fp32, cross-entropy, backward, clip, AdamW. Both use
the same model size, batch and context; the figure for each is the median over the timed steps.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

import _results
import numpy as np
import torch
import torch.nn.functional as F

from gptmini.core.config import ModelConfig, TrainConfig, load_params
from gptmini.core.device import cpu_has_fast_bf16, pick_device, pick_dtype
from gptmini.model import GPT
from gptmini.training.trainer import Trainer

GOAL = 1.0  # on CUDA: project tokens/s / reference tokens/s
CPU_MFU_GOAL = 0.50  # on a CPU: the project step's share of the assumed float32 peak

# Dense peak TFLOP/s of known accelerators, by dtype (vendor datasheets, SXM parts).
GPU_PEAKS = {"H100": {"bfloat16": 989.0, "float32": 67.0},
             "H200": {"bfloat16": 989.0, "float32": 67.0},
             "A100": {"bfloat16": 312.0, "float32": 19.5}}


def flops_per_token(cfg: ModelConfig, n_params: int) -> float:
    """Training FLOPs per token (forward + backward): 6N for the weights plus the attention
    scores, 12 * layers * width * context (the PaLM / nanoGPT estimate)."""
    n = n_params - cfg.block_size * cfg.n_embd  # position embeddings do no matmul work
    return 6 * n + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    name = "bfloat16" if dtype == torch.bfloat16 else "float32"
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAKS.items():
            if key in gpu:
                return peaks[name] * 1e12, f"{gpu}: {peaks[name]:g} TFLOP/s dense {name}"
        return float("nan"), f"{gpu}: peak unknown"
    cores = torch.get_num_threads()
    mhz = max((float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)",
                                             Path("/proc/cpuinfo").read_text())), default=0.0)
    # Per core and cycle: two 256-bit FMA pipes = 32 fp32 FLOPs; AVX512-BF16 dot products
    # double that for bfloat16. An upper bound: the real machine may share cores.
    per_cycle = 64 if name == "bfloat16" else 32
    peak = cores * mhz * 1e6 * per_cycle
    return peak, (f"CPU: {cores} threads x {mhz:.0f} MHz x {per_cycle} {name} FLOP/cycle "
                  f"= {peak / 1e12:.3f} TFLOP/s (assumed)")



def reference_tokens_per_second(cfg: ModelConfig, vocab: int, tokens: np.ndarray, batch: int,
                                steps: int, warmup: int, device: torch.device) -> float:
    torch.manual_seed(0)
    model = GPT(cfg, vocab).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    rng = np.random.default_rng(0)
    times = []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        ix = rng.integers(0, len(tokens) - cfg.block_size - 1, size=batch)
        x = torch.stack([torch.from_numpy(tokens[i:i + cfg.block_size].astype(np.int64))
                         for i in ix]).to(device)
        y = torch.stack([torch.from_numpy(tokens[i + 1:i + 1 + cfg.block_size].astype(np.int64))
                         for i in ix]).to(device)
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss.item()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    return batch * cfg.block_size / statistics.median(times)


def project_run(cfg: ModelConfig, vocab: int, tokens: np.ndarray, train_cfg: TrainConfig,
                steps: int, device: torch.device, dtype: torch.dtype
                ) -> tuple[Trainer, list[float]]:
    """The project's trainer on these tokens for `steps` steps, and its tokens/s at each."""
    torch.manual_seed(train_cfg.seed)
    split = int(len(tokens) * 0.9)
    trainer = Trainer(GPT(cfg, vocab), tokens[:split], tokens[split:], train_cfg, device,
                      steps=steps, dtype=dtype)
    rates: list[float] = []
    trainer.run(progress=False, on_step=lambda row: rates.append(row["tokens_per_second"]))
    return trainer, rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--device", default=None, help="default: train.device of params.yaml")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternate the variants this many times, so that a change in "
                             "machine load hits both alike")
    parser.add_argument("--quick", action="store_true",
                        help="3 timed steps per variant after 1 untimed, one round: checks "
                             "that it runs and meets its goal")
    parser.add_argument("--loss-check", type=int, default=0, metavar="STEPS",
                        help="also train STEPS steps in float32 and bfloat16 from the same "
                             "start on the same batches and compare the loss estimates")
    _results.add_json_option(parser)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.rounds = 3, 1, 1

    params = load_params(args.params)
    tcfg = params.train
    device = pick_device(args.device or tcfg.device)
    dtype = pick_dtype(tcfg.dtype, device)
    if device.type == "cpu":
        torch.set_num_threads(tcfg.threads or os.cpu_count() or 1)
    batch = args.batch_size or tcfg.batch_size
    tokens_file = Path("data/tokens/train.bin")
    tokens = (np.memmap(tokens_file, dtype=np.uint16, mode="r") if tokens_file.exists()
              else np.random.default_rng(0).integers(0, 65, size=1_000_000).astype(np.uint16))
    vocab = int(tokens.max()) + 1 if not tokens_file.exists() else 65
    cfg = params.model
    n_params = GPT(cfg, vocab).num_parameters()
    fpt = flops_per_token(cfg, n_params)

    # Both sides step AdamW, so the ratio is the step's machinery (autocast, batching);
    # what Muon costs on top is benchmarks/optimizer_speed.py's figure.
    bench_cfg = TrainConfig(**{**tcfg.model_dump(), "batch_size": batch, "optimizer": "adamw",
                               "warmup_steps": 1,
                               "eval_interval": 10**6, "eval_iters": 1,
                               "checkpoint_interval": 10**6})
    # The default step in float32 and, where the hardware multiplies bf16 natively (CUDA,
    # AVX512-BF16), the same step under bf16 autocast: the opt-in's speed, in the same run.
    dtypes = [dtype]
    if dtype != torch.bfloat16 and (device.type == "cuda" or cpu_has_fast_bf16()):
        dtypes.append(torch.bfloat16)
    ref_runs: list[float] = []
    proj_runs: dict[torch.dtype, list[float]] = {d: [] for d in dtypes}
    for _ in range(args.rounds):
        ref_runs.append(reference_tokens_per_second(cfg, vocab, tokens, batch, args.steps,
                                                    args.warmup, device))
        for d in dtypes:
            _, rates = project_run(cfg, vocab, tokens, bench_cfg, args.warmup + args.steps,
                                   device, d)
            proj_runs[d].append(statistics.median(rates[args.warmup:]))
    ref_tps = statistics.median(ref_runs)
    tps_of = {d: statistics.median(runs) for d, runs in proj_runs.items()}
    proj_tps = tps_of[dtype]

    ref_peak, ref_peak_text = peak_flops(device, torch.float32)
    proj_peak, proj_peak_text = peak_flops(device, dtype)
    print(f"model: {n_params:,} parameters, batch {batch} x {cfg.block_size} tokens, "
          f"{fpt / 1e6:.2f} MFLOP per token (training)")
    print(f"device: {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"peak (reference, float32): {ref_peak_text}")
    print(f"peak (project, {str(dtype).removeprefix('torch.')}): {proj_peak_text}")
    print(f"{'step':<34}{'tokens/s':>12}{'ms/step':>10}{'MFU':>9}")
    rows = [("reference: eager float32", ref_tps, ref_peak)]
    for d, tps in tps_of.items():
        label = "float32" if d == torch.float32 else f"{str(d).removeprefix('torch.')} autocast"
        rows.append((f"project: {label}{', compiled' if tcfg.compile else ''}", tps,
                     peak_flops(device, d)[0]))
    for name, tps, peak in rows:
        print(f"{name:<34}{tps:>12,.0f}{batch * cfg.block_size / tps * 1000:>10.1f}"
              f"{tps * fpt / peak:>9.2%}")
    if torch.bfloat16 in tps_of and dtype != torch.bfloat16:
        print(f"bf16 autocast / float32 step time: {proj_tps / tps_of[torch.bfloat16]:.2f}x")
    elif device.type == "cpu" and dtype != torch.bfloat16:
        print("bf16 autocast: not timed (this CPU has no AVX512-BF16: bf16 matmuls are "
              "emulated, ~37x slower than float32 on an AMD Zen 3)")
    ratio = proj_tps / ref_tps
    if device.type == "cpu":
        mfu = proj_tps * fpt / proj_peak
        met = mfu >= CPU_MFU_GOAL
        print(f"ratio (project / reference): {ratio:.2f}x (the same computation: no goal)")
        print(f"project step: {mfu:.1%} of the assumed peak (goal >= {CPU_MFU_GOAL:.0%}: "
              f"{'met' if met else 'MISSED'})")
    else:
        met = ratio >= GOAL
        print(f"ratio (project / reference): {ratio:.2f}x (goal >= {GOAL:g}x: "
              f"{'met' if met else 'MISSED'})")

    step_tokens = batch * cfg.block_size
    measured = {"reference_ms": step_tokens / ref_tps * 1000,
                **{f"project_{str(d).removeprefix('torch.')}_ms": step_tokens / tps * 1000
                   for d, tps in tps_of.items()},
                "mflop_per_token": fpt / 1e6, "peak_tflops": proj_peak / 1e12,
                "tokens_per_step": step_tokens}
    goal = (f"project step >= {CPU_MFU_GOAL:.0%} of the assumed peak" if device.type == "cpu"
            else f"project / reference >= {GOAL:g}")
    _results.write(args.json, "train_throughput", args, measured, goal, met)
    if args.loss_check:
        check_cfg = TrainConfig(**{**tcfg.model_dump(), "batch_size": batch,
                                   "eval_interval": max(1, args.loss_check // 4),
                                   "checkpoint_interval": 10**6, "keep_best": False})
        print(f"\nloss check: {args.loss_check} steps from the same start on the same batches")
        curves = {}
        for d in (torch.float32, torch.bfloat16):
            curves[d] = project_run(cfg, vocab, tokens, check_cfg, args.loss_check, device,
                                    d)[0].evals
        print(f"{'step':>6}{'val fp32':>11}{'val bf16':>11}{'diff':>9}")
        for a, b in zip(curves[torch.float32], curves[torch.bfloat16], strict=True):
            print(f"{a['step']:>6}{a['val_loss']:>11.4f}{b['val_loss']:>11.4f}"
                  f"{b['val_loss'] - a['val_loss']:>+9.4f}")
    sys.stdout.flush()
    if not met:
        sys.exit(1)


if __name__ == "__main__":
    main()
