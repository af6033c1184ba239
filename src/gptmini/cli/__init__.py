"""The `gptmini` command: generate text, evaluate a file, list the MLflow runs, describe the
export, start the app, run the team stack. One module a command, each with its
`add_parser`. Expected failures (no export, a bad flag, a prompt the model cannot take) are
one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

COMMANDS = ("generate", "evaluate", "runs", "sync", "compile", "info", "app")  # cli modules


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from gptmini.team.cli import add_parser as add_team_parser

    parser = argparse.ArgumentParser(
        prog="gptmini", description="Use the exported GPT-Mini model: generate text, "
        "evaluate text, compare the MLflow runs, describe the export, start the web app.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"gptmini.cli.{name}").add_parser(sub)
    add_team_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from gptmini.core.env import resolve_path_variables

    resolve_path_variables()
    args = build_parser().parse_args(argv)
    from gptmini.cli.common import CliError
    from gptmini.cli.runs import RunsError
    from gptmini.core.config import ConfigError
    from gptmini.data.text import InputError
    from gptmini.inference.engines import EngineError
    from gptmini.inference.loading import ExportError
    from gptmini.team.stack import TeamError

    try:
        return args.func(args)
    except (CliError, ConfigError, EngineError, ExportError, InputError, RunsError,
            TeamError) as exc:
        sys.stdout.flush()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, like other command-line tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
