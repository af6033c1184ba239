"""Tokenize stage at scale: MB/s and peak memory for corpora of 10, 100 and 400 MB, for the
char tokenizer and GPT-2 BPE. Goal: time linear in size, memory flat, >= 20 MB/s for gpt2.

    python benchmarks/tokenize_scale.py [--sizes 10 100 400] [--workdir /tmp/gptmini-scale]
    python benchmarks/tokenize_scale.py --quick     # 10 and 40 MB
    python benchmarks/tokenize_scale.py --repeats 1 # one run a case (default: best of 3)

Exit 1 when a goal is missed: between the smallest and the largest size, time grows at
most 1.25x as fast as the size and peak memory by at most 64 MiB; gpt2 at >= 20 MB/s on
corpora of 100 MB and more (below, the fixed cost of loading the BPE ranks dominates).

Corpora are the real Tiny Shakespeare (GPTMINI_DATA_MIRROR / ../shared/data, or
data/raw/input.txt) repeated to size; each case runs `gptmini.tokens.prepare` in a fresh
process, whose peak resident memory (ru_maxrss) is reported. Every case runs `--repeats`
times, the rounds interleaved (each round every size and tokenizer once), and its fastest
run and largest peak count: a 10 MB char case takes a third of a second, so one run on a
shared machine can miss the linearity goal by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MB = 1_000_000
GPT2_MB_PER_S, GPT2_FROM_MB = 20.0, 100  # goal, and the smallest corpus it applies to
LINEARITY, MEMORY_GROWTH_MIB = 1.25, 64
CHILD = r"""
import json, resource, sys, time
from gptmini.core.config import TokenizerConfig, load_params
from gptmini.data.tokens import prepare
corpus, out, kind = sys.argv[1:4]
defaults = load_params("params.yaml").tokenizer.model_dump()
t0 = time.perf_counter()
counts = prepare(corpus, out, TokenizerConfig(**{**defaults, "kind": kind, "encoding": "gpt2"}))
wall = time.perf_counter() - t0
print(json.dumps({"wall": wall, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "tokens": counts["train"]["tokens"] + counts["val"]["tokens"]}))
"""


def source_text() -> str:
    candidates = [Path(os.environ.get("GPTMINI_DATA_MIRROR", "")) / "tinyshakespeare.txt",
                  Path(__file__).resolve().parents[1].parent / "shared/data/tinyshakespeare.txt",
                  Path("data/raw/input.txt")]
    for path in candidates:
        if path.is_file():
            return path.read_text(encoding="utf-8")
    sys.exit("no corpus found: set GPTMINI_DATA_MIRROR or run the download stage first")


def make_corpus(path: Path, size_mb: int, text: str) -> None:
    block = text.encode("utf-8")
    with open(path, "wb") as fh:
        written = 0
        while written < size_mb * MB:
            piece = block[: size_mb * MB - written]
            fh.write(piece)
            written += len(piece)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 400])
    parser.add_argument("--kinds", nargs="+", default=["char", "bpe"])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--quick", action="store_true", help="corpora of 10 and 40 MB only")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each case, interleaved; the fastest counts (default 3)")
    args = parser.parse_args()
    if args.quick:
        args.sizes = [10, 40]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gptmini-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    text = source_text()
    shared_cache = Path(__file__).resolve().parents[1].parent / "shared/tiktoken-cache"
    if "TIKTOKEN_CACHE_DIR" not in os.environ and shared_cache.is_dir():
        os.environ["TIKTOKEN_CACHE_DIR"] = str(shared_cache)
    results: dict[str, dict[int, dict]] = {kind: {} for kind in args.kinds}
    try:
        corpora = {size: work / f"corpus-{size}MB.txt" for size in args.sizes}
        for size, corpus in corpora.items():
            make_corpus(corpus, size, text)
        for _ in range(max(1, args.repeats)):
            for size, corpus in corpora.items():
                for kind in args.kinds:
                    r = run_case(corpus, work / f"tokens-{kind}-{size}", kind, size)
                    best = results[kind].get(size)
                    if best is not None:
                        r = {**(r if r["wall"] < best["wall"] else best),
                             "peak_kb": max(r["peak_kb"], best["peak_kb"])}
                    results[kind][size] = r
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            for corpus in work.glob("corpus-*MB.txt"):
                corpus.unlink()
    print(f"{'tokenizer':<10}{'size MB':>8}{'tokens':>14}{'seconds':>9}{'MB/s':>8}"
          f"{'peak MiB':>10}")
    for size in args.sizes:
        for kind in args.kinds:
            r = results[kind][size]
            name = "gpt2" if kind == "bpe" else kind
            print(f"{name:<10}{size:>8}{r['tokens']:>14,}{r['wall']:>9.1f}"
                  f"{size / r['wall']:>8.1f}{r['peak_kb'] / 1024:>10.0f}")
    missed = check_goals(results)
    for line in missed:
        print(f"MISSED: {line}")
    if missed:
        sys.exit(1)
    print("goals met")


def run_case(corpus: Path, out: Path, kind: str, size: int) -> dict:
    """One run of the tokenize stage's `prepare` in a fresh process: its wall time, peak
    memory and token count."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(corpus), str(out), kind],
                          capture_output=True, text=True)
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        sys.exit(f"{kind} {size} MB failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_goals(results: dict[str, dict[int, dict]]) -> list[str]:
    """The goals each result misses, one line each."""
    missed = []
    for kind, by_size in results.items():
        small, large = min(by_size), max(by_size)
        if large > small:
            growth = by_size[large]["wall"] / by_size[small]["wall"]
            if growth > LINEARITY * large / small:
                missed.append(f"{kind}: {growth:.1f}x the time for {large / small:g}x the text "
                              f"(goal <= {LINEARITY * large / small:.1f}x)")
            memory = (by_size[large]["peak_kb"] - by_size[small]["peak_kb"]) / 1024
            if memory > MEMORY_GROWTH_MIB:
                missed.append(f"{kind}: peak memory grew {memory:.0f} MiB from {small} to "
                              f"{large} MB (goal <= {MEMORY_GROWTH_MIB} MiB)")
        for size, r in by_size.items():
            if kind == "bpe" and size >= GPT2_FROM_MB and size / r["wall"] < GPT2_MB_PER_S:
                missed.append(f"gpt2 {size} MB: {size / r['wall']:.1f} MB/s "
                              f"(goal >= {GPT2_MB_PER_S:g})")
    return missed


if __name__ == "__main__":
    main()
