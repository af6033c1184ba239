"""Devices, precision, seeding and distributed processes: where and how tensors are computed.

`pick_device("auto")` picks CUDA, then MPS, then the CPU; `pick_dtype("auto")` picks
bfloat16 autocast on CUDA and float32 elsewhere (on a CPU, bf16 is an opt-in: its results
depend on the CPU's instruction set); a stage that asks for more than one
process relaunches itself under torchrun, and each process joins the job with
`init_distributed`.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from gptmini.core.config import ConfigError


@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean(self, value: float, device: torch.device) -> float:
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.item() / self.world_size



def pick_device(name: str, local_rank: int = 0, key: str = "device") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; any other name is used as given. A device
    this machine lacks is a bad value of params.yaml's `key`, said in one line."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"params.yaml: {key} = cuda: CUDA is not available on this "
                              "machine; allowed here: auto, cpu")
        return torch.device("cuda", local_rank)
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"params.yaml: {key} = mps: MPS is not available on this machine; "
                          "allowed here: auto, cpu")
    return torch.device(name)


def relaunch_with_torchrun(processes: int, script: str) -> int:
    """Run `script` again on `processes` local processes under torchrun; its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={processes}", script, *sys.argv[1:]]
    return subprocess.run(cmd).returncode


def init_distributed(device_name: str, key: str = "train.device"
                     ) -> tuple[Distributed, torch.device]:
    """Join the torchrun job this process belongs to (nccl on CUDA, gloo on CPU), if any."""
    if "LOCAL_RANK" not in os.environ:
        return Distributed(), pick_device(device_name, key=key)
    device = pick_device(device_name, int(os.environ["LOCAL_RANK"]), key)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size()), device


def cpu_has_fast_bf16() -> bool:
    """The CPU multiplies bfloat16 natively (AVX512-BF16 or AMX)."""
    from gptmini.core.numerics import cpu_flags

    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 autocast on CUDA with bf16, else float32. Never bf16 on a CPU by
    default: float32 gives the same bits on every x86 CPU (with the kernel paths pinned,
    `gptmini.core.numerics`), bf16 does not, and without AVX512-BF16 it is emulated,
    many times slower."""
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
