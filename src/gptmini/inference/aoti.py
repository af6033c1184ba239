"""AOTInductor generation: the export's torch.export programs (prefill.pt2, decode.pt2)
compiled by `torch._inductor.aoti_compile_and_package` into C++ kernels on this machine,
once, and run under the library's loop and sampling (gptmini.inference.generation), with
torch alone (and a C++ compiler for the build).

The compiled packages are not part of the export: their kernels are built for the CPU
that compiles them (an AVX-512 build does not run on an AVX2 CPU) while the export is
shared through one DVC cache, and the build takes a minute or more. They are a cache of
this machine, `$GPTMINI_AOTI_CACHE` (default `~/.cache/gptmini/aoti`, under
`$XDG_CACHE_HOME` when set), one folder per programs, torch version and CPU, built on
first use; the `auto` engine takes them only once built (`gptmini compile` builds them).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from gptmini.core.atomic import atomic_dir
from gptmini.core.numerics import kernel_tags
from gptmini.export.layout import DECODE_FILE, PREFILL_FILE
from gptmini.inference.programs import ProgramGenerator

CACHE_ENV = "GPTMINI_AOTI_CACHE"


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gptmini" / "aoti"


def build_key(directory: Path) -> str:
    """What the compiled kernels depend on: both programs' bytes, torch's version, and the
    CPU and its vector instructions (Inductor compiles for those it finds)."""
    cpu = kernel_tags()
    digest = hashlib.sha256()
    for name in (PREFILL_FILE, DECODE_FILE):
        digest.update((directory / name).read_bytes())
    for fact in (torch.__version__, cpu["cpu.model"], cpu["cpu.isa"]):
        digest.update(b"\0" + fact.encode())
    return digest.hexdigest()[:24]


def built_dir(directory: Path) -> Path:
    return cache_root() / build_key(directory)


def _complete(folder: Path) -> bool:
    return (folder / PREFILL_FILE).is_file() and (folder / DECODE_FILE).is_file()


def is_built(directory: Path) -> bool:
    return _complete(built_dir(directory))


def compile_programs(programs: dict[str, torch.export.ExportedProgram], folder: Path) -> None:
    """Each program compiled into a package in `folder`, under its name."""
    from torch._inductor import aoti_compile_and_package

    for name, program in programs.items():
        aoti_compile_and_package(program, package_path=str(folder / name))


def build(directory: Path) -> Path:
    """The folder of the compiled programs of the export in `directory`, compiled now
    unless the cache has them (under the same names); written whole or not at all."""
    folder = built_dir(directory)  # the key hashes both programs: once
    if not _complete(folder):
        with atomic_dir(folder) as tmp:
            compile_programs({name: torch.export.load(directory / name)
                              for name in (PREFILL_FILE, DECODE_FILE)}, tmp)
    return folder


class AotiGenerator(ProgramGenerator):
    """ProgramGenerator's loop on the compiled packages. Their kernels index each input with
    the strides it was traced with (contiguous; nothing checks them at run time), so every
    input is made contiguous first: a window cut from a batch is not."""

    def __init__(self, folder: Path, block_size: int) -> None:
        from torch._inductor import aoti_load_package

        prefill = aoti_load_package(str(folder / PREFILL_FILE))
        decode = aoti_load_package(str(folder / DECODE_FILE))

        def run_prefill(idx: torch.Tensor) -> Any:
            return prefill(idx.contiguous())

        def run_decode(next_id: torch.Tensor, cache: torch.Tensor) -> Any:
            return decode(next_id.contiguous(), cache.contiguous())

        super().__init__(run_prefill, run_decode, block_size)
