"""Output-head speed: a training step of the seed model with gpt2's 50,257-token vocabulary
through the chunked head (`gptmini.head`) against the same step through the plain head
(the full logits) and a char step (65 symbols), timed interleaved in one run, and the peak
memory of each step.

    python benchmarks/head_speed.py             # params.yaml's model and batch, 10 steps each
    python benchmarks/head_speed.py --quick     # 2 steps each: checks that it runs
    python benchmarks/head_speed.py --chunks 32,64,128,256   # also time these chunk sizes

A step is the trainer's: autocast in the dtype `pick_dtype(train.dtype)` picks (bf16 on a
CPU with AVX512-BF16), the loss from `model(x, y)`, backward, gradient clipping, AdamW.
The variants take turns step by step, so a change in machine load hits them alike; each
figure is the median. Peak memory is the step's high-water mark: on a CPU the resident set
(VmHWM) of a fresh process that builds the model and optimizer and runs one step, on
CUDA `torch.cuda.max_memory_allocated`.

Goal: a BPE step through the chunked head at most 1.1x the FLOP ratio of the two steps (the
50,257-token head's matmuls are about 5x the char model's FLOPs): the chunked head as
efficient per FLOP as the rest of the step, within 10% for its loop. Exit 1 when missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _results
import torch

from gptmini.core.config import ModelConfig, TrainConfig, load_params
from gptmini.core.device import autocast, pick_device, pick_dtype
from gptmini.head import CHUNK
from gptmini.model import GPT
from gptmini.training.trainer import make_optimizer

GOAL = 1.1  # (BPE chunked / char, per step) / (their FLOPs a token)
CHAR_VOCAB, BPE_VOCAB = 65, 50_257


def step_flops(cfg: ModelConfig, vocab: int) -> float:
    """A training step's FLOPs a token (forward and backward: 6 a weight, and the attention's
    12 a layer, position and channel, as nanoGPT counts them), the tied head included."""
    blocks = 12 * cfg.n_layer * cfg.n_embd ** 2
    return 6 * (blocks + vocab * cfg.n_embd) + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd


def variants(chunks: list[int]) -> dict[str, tuple[int, bool, int]]:
    """name -> (vocabulary, plain head, chunk)"""
    out = {"char": (CHAR_VOCAB, True, CHUNK), "bpe-plain": (BPE_VOCAB, True, CHUNK),
           "bpe-chunked": (BPE_VOCAB, False, CHUNK)}
    out.update({f"bpe-chunk-{c}": (BPE_VOCAB, False, c) for c in chunks if c != CHUNK})
    return out


LABELS = {"char": f"char (vocab {CHAR_VOCAB})", "bpe-plain": f"BPE {BPE_VOCAB:,}, plain head",
          "bpe-chunked": f"BPE {BPE_VOCAB:,}, chunked ({CHUNK})"}


class Variant:
    """A model, its optimizer and a fixed batch: one training step at a time."""

    def __init__(self, spec: tuple[int, bool, int], cfg: ModelConfig, tcfg: TrainConfig,
                 batch: int, device: torch.device, dtype: torch.dtype) -> None:
        vocab, plain, chunk = spec
        torch.manual_seed(0)
        self.model = GPT(cfg, vocab).to(device).train()
        self.model.chunked_head = not plain
        self.model.head_chunk = chunk
        self.optimizer = make_optimizer(self.model, tcfg, device)
        ids = torch.randint(0, vocab, (batch, cfg.block_size + 1), device=device)
        self.x, self.y = ids[:, :-1], ids[:, 1:]
        self.device, self.dtype, self.grad_clip = device, dtype, tcfg.grad_clip

    def step(self) -> float:
        """One step, as `Trainer.run` takes it; its seconds."""
        sync(self.device)
        t0 = time.perf_counter()
        with autocast(self.device, self.dtype):
            loss = self.model(self.x, self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        loss.item()
        sync(self.device)
        return time.perf_counter() - t0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def max_rss_mb() -> float:
    """This process's resident-set high-water mark. On Linux VmHWM, which starts afresh at
    exec: ru_maxrss would carry over the parent's peak into a subprocess."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20  # macOS counts bytes


def peak_memory(name: str, args: argparse.Namespace, spec, cfg, tcfg, device, dtype
                ) -> tuple[float, float]:
    """(peak MB, MB above the model and optimizer's set-up) of one step of `name`."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        variant = Variant(spec, cfg, tcfg, args.batch_size, device, dtype)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        variant.step()
        peak = torch.cuda.max_memory_allocated(device)
        del variant
        return peak / 2**20, (peak - base) / 2**20
    cmd = [sys.executable, __file__, "--memory-of", name, "--params", args.params,
           "--device", str(device), "--batch-size", str(args.batch_size),
           "--threads", str(torch.get_num_threads()),
           "--chunks", ",".join(map(str, args.chunks))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    record = json.loads(out.strip().splitlines()[-1])
    return record["peak_mb"], record["peak_mb"] - record["setup_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: train.batch_size of params.yaml")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant")
    parser.add_argument("--quick", action="store_true",
                        help="2 timed steps per variant after 1 untimed: checks that it runs")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads; default: train.threads of params.yaml (0: all)")
    parser.add_argument("--chunks", type=lambda s: [int(c) for c in s.split(",") if c],
                        default=[], help="also time the chunked head at these chunk sizes")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak memory")
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)
    _results.add_json_option(parser)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup = 2, 1

    params = load_params(args.params)
    cfg, tcfg = params.model, params.train
    device = pick_device(args.device)
    dtype = pick_dtype(tcfg.dtype, device)
    threads = args.threads if args.threads is not None else tcfg.threads
    torch.set_num_threads(threads or os.cpu_count() or 1)
    args.batch_size = args.batch_size or tcfg.batch_size
    specs = variants(args.chunks)

    if args.memory_of:  # a fresh process: set up, then one step
        variant = Variant(specs[args.memory_of], cfg, tcfg, args.batch_size, device, dtype)
        setup = max_rss_mb()
        variant.step()
        print(json.dumps({"setup_mb": setup, "peak_mb": max_rss_mb()}))
        return

    print(f"model: {cfg.n_layer} layers, {cfg.n_embd} wide, {cfg.n_head} heads, context "
          f"{cfg.block_size}; batch {args.batch_size} x {cfg.block_size}; {device}, "
          f"{str(dtype).removeprefix('torch.')} autocast, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"{args.steps} timed steps per variant after {args.warmup} untimed, interleaved")
    built = {name: Variant(spec, cfg, tcfg, args.batch_size, device, dtype)
             for name, spec in specs.items()}
    times: dict[str, list[float]] = {name: [] for name in built}
    for i in range(args.warmup + args.steps):
        for name, variant in built.items():
            seconds = variant.step()
            if i >= args.warmup:
                times[name].append(seconds)
    ms = {name: statistics.median(t) * 1000 for name, t in times.items()}
    del built

    memory = {}
    if not args.no_memory:
        for name in ("char", "bpe-plain", "bpe-chunked"):
            memory[name] = peak_memory(name, args, specs[name], cfg, tcfg, device, dtype)

    print(f"\n{'step':<28}{'ms/step':>10}{'peak MB':>10}{'above set-up':>14}")
    for name in times:
        peak, above = memory.get(name, (float("nan"), float("nan")))
        print(f"{LABELS.get(name, f'BPE, chunk {specs[name][2]}'):<28}{ms[name]:>10.1f}"
              f"{peak:>10.0f}{above:>14.0f}")
    ratio = ms["bpe-chunked"] / ms["char"]
    flops = step_flops(cfg, BPE_VOCAB) / step_flops(cfg, CHAR_VOCAB)
    limit = GOAL * flops
    print(f"\nBPE chunked / char: {ratio:.2f}x; their FLOPs a token: {flops:.2f}x "
          f"({step_flops(cfg, BPE_VOCAB) / 1e6:.1f} / {step_flops(cfg, CHAR_VOCAB) / 1e6:.2f} "
          f"MFLOP); goal <= {GOAL:g} x {flops:.2f} = {limit:.2f}x: "
          f"{'met' if ratio <= limit else 'MISSED'}")
    print(f"BPE plain / chunked: {ms['bpe-plain'] / ms['bpe-chunked']:.2f}x")
    if memory:
        plain, chunked = memory["bpe-plain"][1], memory["bpe-chunked"][1]
        print(f"BPE step memory above set-up, plain -> chunked: {plain:,.0f} MB -> "
              f"{chunked:,.0f} MB ({plain / max(chunked, 1e-9):.1f}x less)")
    _results.write(args.json, "head_speed", args,
                   {**{f"{name}_ms": value for name, value in ms.items()},
                    **{f"{name}_above_setup_mb": above
                       for name, (_, above) in memory.items()},
                    "bpe_mflop_per_token": step_flops(cfg, BPE_VOCAB) / 1e6,
                    "char_mflop_per_token": step_flops(cfg, CHAR_VOCAB) / 1e6},
                   f"bpe-chunked / char <= {GOAL:g} x their FLOP ratio", ratio <= limit)
    sys.stdout.flush()
    if ratio > limit:
        sys.exit(1)


if __name__ == "__main__":
    main()
