"""`gptmini info`: what the export holds."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gptmini.cli.common import add_export_dir, load


def run(args: argparse.Namespace) -> int:
    from gptmini.inference.loading import export_summary

    exported = load(args)
    if args.json:
        print(json.dumps(exported.record, indent=2, sort_keys=True))
    else:
        print(export_summary(exported))
    return 0


def add_parser(sub: Any) -> None:
    info = sub.add_parser("info", help="what the export holds",
                          description="The export's files, model, tokenizer and metrics.")
    info.add_argument("--json", action="store_true",
                      help="print evaluation_metrics.json as it is")
    add_export_dir(info)
    info.set_defaults(func=run)
