"""A benchmark's figures as a JSON file (`--json PATH`), for docs that quote them.

The docs quote a benchmark's measurements from such a file, committed under docs/results/,
and tests/test_docs.py checks each quoted figure against it, ratios recomputed from the
measurements: a figure is typed once, by the benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the measurements, the goal and the CPU to PATH")


def write(path: str | None, benchmark: str, args: argparse.Namespace,
          measured: dict[str, Any], goal: str, met: bool) -> None:
    """Write `measured` (plain numbers, keyed by what they are) with what ran them: the
    CPU (vendor, family, model), the threads, the torch version and the benchmark's
    options. Nothing when `path` is None."""
    if path is None:
        return
    import torch

    from gptmini.core.numerics import cpu_flags, cpu_model, cpu_vendor

    flags = cpu_flags()
    record = {
        "benchmark": benchmark,
        "cpu": {"vendor": cpu_vendor(), "model": cpu_model(),
                "avx512": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
                "cores": os.cpu_count()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "options": {k: v for k, v in vars(args).items() if k != "json"},
        "measured": measured,
        "goal": goal,
        "met": met,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
