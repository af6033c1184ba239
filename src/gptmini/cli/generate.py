"""`gptmini generate`: text after a prompt, streamed to stdout."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from gptmini.cli.common import add_engine, add_export_dir, load, positive_int


def _stdin_text() -> str:
    """The prompt piped in, which must be UTF-8 (a terminal's text is)."""
    from gptmini.data.text import InputError

    if not hasattr(sys.stdin, "buffer"):  # already text (an embedding program's stdin)
        return sys.stdin.read()
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"the prompt is not UTF-8 text: byte 0x{data[exc.start]:02x} at "
                         f"offset {exc.start}") from None


def run(args: argparse.Namespace) -> int:
    import torch

    from gptmini.data.text import printable
    from gptmini.inference.generation import generate_text

    torch.set_num_threads(args.threads)
    prompt_text = _stdin_text() if args.prompt == "-" else args.prompt
    exported = load(args)
    exported.generation_model  # noqa: B018 (a broken engine file fails before any output)
    started = generate_text(exported, prompt_text, length=args.length,
                            temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, stop=args.stop)
    for notice in started.prompt.notices:
        print(f"note: {notice}", file=sys.stderr)
    out = sys.stdout
    if args.echo and started.prompt.text:
        out.write(printable(started.prompt.text))
        out.flush()
    start, n_chars = time.perf_counter(), 0
    for piece in started.pieces:
        out.write(printable(piece))
        out.flush()
        n_chars += len(piece)
    seconds = time.perf_counter() - start
    out.write("\n")
    out.flush()
    if not args.quiet:
        print(f"[{n_chars:,} chars in {seconds:.2f} s: {n_chars / max(seconds, 1e-9):,.0f} "
              f"chars/s; seed {started.sampling.seed}]", file=sys.stderr)
    return 0


def add_parser(sub: Any) -> None:
    from gptmini.inference.generation import Sampling

    default = Sampling()
    gen = sub.add_parser("generate", help="generate text from a prompt, streamed to stdout",
                         description="Sample text after PROMPT with the export's KV-cache "
                         "generation; the text streams to stdout, notes and speed to stderr.")
    gen.add_argument("prompt", nargs="?", default="",
                     help="the text to continue ('-' reads stdin; empty starts from a "
                          "newline; only the last context-length tokens are used)")
    # Sampling values are parsed as numbers here and checked by Sampling.from_user, the
    # same check as the app's.
    gen.add_argument("-n", "--length", type=int, default=default.max_new_tokens, metavar="N",
                     help="tokens to generate (characters for a char model; default "
                          f"{default.max_new_tokens})")
    gen.add_argument("-t", "--temperature", type=float, default=default.temperature,
                     help=f"sampling temperature, >= 0; 0 is greedy (default "
                          f"{default.temperature})")
    gen.add_argument("--top-k", type=int, default=default.top_k, metavar="K",
                     help="sample among the K most likely tokens, 1..vocabulary size "
                          "(default: all)")
    gen.add_argument("--top-p", type=float, default=default.top_p, metavar="P",
                     help="nucleus sampling: the most likely tokens up to mass P, in (0, 1] "
                          "(default 1: off)")
    gen.add_argument("--seed", type=int, default=None,
                     help="seed for repeatable output (default: random, printed at the end)")
    gen.add_argument("--stop", default=None, metavar="TEXT",
                     help="stop before this text appears (it is not printed)")
    gen.add_argument("--no-echo", dest="echo", action="store_false",
                     help="print only the generated text, not the prompt before it")
    gen.add_argument("-q", "--quiet", action="store_true", help="no speed line on stderr")
    gen.add_argument("--threads", type=positive_int, default=1, metavar="N",
                     help="torch threads (default 1: one token at a time is too small a job "
                          "to split)")
    add_engine(gen)
    add_export_dir(gen)
    gen.set_defaults(func=run)
