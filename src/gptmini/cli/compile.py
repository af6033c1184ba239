"""`gptmini compile`: the export's programs compiled for this CPU (the `aoti` engine)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from gptmini.cli.common import add_export_dir, load


def run(args: argparse.Namespace) -> int:
    from gptmini.inference.aoti import built_dir

    args.engine = "aoti"
    start = time.perf_counter()
    exported = load(args)
    exported.generation_model  # noqa: B018 (builds the compiled programs, or loads them)
    print(f"compiled programs in {built_dir(exported.directory)}/ "
          f"({time.perf_counter() - start:.0f} s); `--engine aoti` runs them, and `auto` "
          "where ONNX Runtime is absent")
    return 0


def add_parser(sub: Any) -> None:
    comp = sub.add_parser("compile", help="compile the export's programs for this CPU "
                          "(AOTInductor)", description="Compile prefill.pt2 and decode.pt2 "
                          "with AOTInductor into this machine's cache (once per export, "
                          "torch version and CPU; needs a C++ compiler): the `aoti` engine.")
    add_export_dir(comp)
    comp.set_defaults(func=run)
