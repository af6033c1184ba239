"""`gptmini mlflow-sync`: deliver what the tracking server missed while it was down."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gptmini.cli.common import CliError


def run(args: argparse.Namespace) -> int:
    from gptmini.core import paths
    from gptmini.core.env import project_root
    from gptmini.core.errors import first_line
    from gptmini.tracking.outbox import Outbox
    from gptmini.tracking.store import bound_http_requests, unreachable_errors

    outbox = Outbox(args.outbox or project_root() / paths.MLFLOW_OUTBOX)
    if not outbox.path.exists():
        print(f"nothing to deliver: no {outbox.path}")
        return 0
    kept = outbox.summary()
    bound_http_requests()
    try:
        delivered = outbox.deliver()
    except unreachable_errors() as exc:
        raise CliError(f"the tracking store is still unreachable ({first_line(exc)}); "
                       f"kept in {outbox.path}: {outbox.summary()}") from None
    print(f"delivered {kept} ({delivered:,} metrics) from {outbox.path}")
    return 0


def add_parser(sub: Any) -> None:
    sync = sub.add_parser("mlflow-sync", help="deliver what the tracking server missed",
                          description="Send the step metrics, artifacts and final run "
                          "statuses that training kept in data/volatile/mlflow_outbox.json "
                          "while the MLflow tracking server was unreachable, to the store "
                          "each run belongs to.")
    sync.add_argument("--outbox", type=Path, default=None, metavar="FILE",
                      help="the outbox file (default: data/volatile/mlflow_outbox.json of the "
                           "project you are in)")
    sync.set_defaults(func=run)
