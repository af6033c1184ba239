"""The same float32 result on every x86 CPU of one vendor: the kernel paths that differ by
instruction set, pinned, and what a run computed with, recorded.

ATen picks its vectorised kernels by the CPU's ISA (AVX2, AVX-512) and MKL its GEMM code
path likewise; on different CPU generations they sum in different orders, so float32
training gives different bits (tests/test_processes.py shows a process on another path
training to other bits). `pin_kernel_paths()` sets both to the AVX2 path, which every x86-64 CPU
this project runs on has, before torch computes anything: `import gptmini` calls it, so
every stage, the CLI and the tests compute alike. A value already in the environment
wins (set one to study another path). oneDNN is pinned as well: bf16 matmuls and GELU go
through it. The pins do not make an Intel CPU sum like an AMD one (MKL's AVX2 GEMM still
differs by vendor: docs/pipeline.md), so the committed reference bits are per vendor.
"""

from __future__ import annotations

import os
from pathlib import Path

PINS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# Set by `native_kernels_env` for a process that runs on the CPU's own fastest paths
# (`train.kernels: native`): nothing is pinned in it.
KERNELS_ENV = "GPTMINI_KERNELS"


def pin_kernel_paths() -> None:
    """Pin ATen's, MKL's and oneDNN's CPU code paths (read by each at its first use)."""
    if kernels() == "native":
        return
    for name, value in PINS.items():
        os.environ.setdefault(name, value)


def kernels() -> str:
    """'native' in a process started by `native_kernels_env`, else 'pinned'."""
    return "native" if os.environ.get(KERNELS_ENV) == "native" else "pinned"


def native_kernels_env(environ: dict[str, str]) -> dict[str, str]:
    """`environ` for a process on the CPU's fastest kernel paths: no pins, MKL's code path
    chosen by MKL (AUTO), and the marker that keeps `import gptmini` from pinning again."""
    env = {k: v for k, v in environ.items() if k not in PINS}
    return {**env, "MKL_CBWR": "AUTO", KERNELS_ENV: "native"}


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_vendor() -> str:
    """The CPU's vendor ('AuthenticAMD', 'GenuineIntel'): the bits of a float32 run are
    the same on every CPU of one vendor, and the reference bits are kept per vendor."""
    return _cpuinfo().get("vendor_id", "unknown")


def cpu_model() -> str:
    """The CPU's model name with its family and model numbers (AMD's EPYC names do not
    tell one CPU generation from the next), e.g. 'AMD EPYC (family 25, model 1)'."""
    fields = _cpuinfo()
    if not fields:
        import platform

        return platform.processor() or "unknown"
    name = fields.get("model name", "unknown")
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name


def cpu_flags() -> set[str]:
    """The CPU's feature flags (avx2, avx512f, avx512_bf16, ...)."""
    return set(_cpuinfo().get("flags", "").split())


def kernel_tags() -> dict[str, str]:
    """What the kernels of this process run on: MLflow tags of every run."""
    import torch

    flags = cpu_flags()
    isa = ("avx512_bf16" if "avx512_bf16" in flags else "avx512" if "avx512f" in flags
           else "avx2" if "avx2" in flags else "other")
    return {
        "cpu.vendor": cpu_vendor(),
        "cpu.model": cpu_model(),
        "cpu.isa": isa,                                          # what the CPU has
        "cpu.kernels": kernels(),                                # train.kernels
        "cpu.kernel_path": torch.backends.cpu.get_cpu_capability(),  # what ATen runs
        "cpu.mkl_cbwr": os.environ.get("MKL_CBWR", "unset"),
        "cpu.threads": str(torch.get_num_threads()),
    }
