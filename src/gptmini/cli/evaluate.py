"""`gptmini evaluate`: NLL, perplexity, accuracy and BPC of a text file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gptmini.cli.common import CliError, add_export_dir, load, positive_int


def _read(file: str) -> str:
    """The text of FILE ('-': stdin); a missing, unreadable or non-UTF-8 file is a CliError."""
    if file == "-":
        return sys.stdin.read()
    try:
        return Path(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"{file}: no such file") from None
    except IsADirectoryError:
        raise CliError(f"{file}: is a directory, not a text file") from None
    except UnicodeDecodeError as exc:
        raise CliError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise CliError(f"{file}: {exc.strerror}") from None


def run(args: argparse.Namespace) -> int:
    from gptmini.evaluation.metrics import encode_text, score
    from gptmini.report import metrics_text

    text = _read(args.file)
    exported = load(args)
    encoded = encode_text(text, exported.tokenizer)
    metrics = score(exported.model, encoded, batch_size=args.batch_size,
                    progress=not args.quiet)
    if args.json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
        return 0
    print(f"{args.file}:")
    print(metrics_text(metrics))
    return 0


def add_parser(sub: Any) -> None:
    ev = sub.add_parser("evaluate", help="NLL, perplexity, accuracy and BPC of a text file",
                        description="Score FILE with the exported model, every token after "
                        "the first predicted once (the same metrics as the evaluate stage).")
    ev.add_argument("file", metavar="FILE", help="a UTF-8 text file ('-' reads stdin)")
    ev.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                    help="windows per forward pass (default 32)")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_export_dir(ev)
    ev.set_defaults(func=run)
