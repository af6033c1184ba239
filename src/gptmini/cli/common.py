"""What the `gptmini` commands share: the one-line error, the flags naming the model and the
engine, and loading the model they name."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gptmini.inference.loading import LoadedExport

EXPORT_ENV = "GPTMINI_EXPORT_DIR"


class CliError(RuntimeError):
    """A failure of the command line, reported as one line."""


def default_export_dir() -> Path:
    """$GPTMINI_EXPORT_DIR, else data/export of the project the working directory is in."""
    if os.environ.get(EXPORT_ENV):
        return Path(os.environ[EXPORT_ENV])
    from gptmini.core.env import project_root

    return project_root() / "data" / "export"


def positive_int(text: str) -> int:
    """For the flags that are not sampling values (threads, port, batch size, limit)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


def add_export_dir(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--export-dir", type=Path, default=None, metavar="DIR",
                       help=f"the export directory (default: ${EXPORT_ENV}, else data/export "
                            "of the project you are in)")
    where.add_argument("--model", default=None, metavar="URI",
                       help="an MLflow model instead, e.g. models:/gptmini@champion, on "
                            "$MLFLOW_TRACKING_URI (else the project's mlflow.db)")


def add_engine(parser: argparse.ArgumentParser) -> None:
    from gptmini.inference.engines import CHOICES

    parser.add_argument("--engine", choices=CHOICES, default="auto",
                        help="what generates: onnx (ONNX Runtime), aoti (the torch.export "
                             "programs compiled here, once: `gptmini compile`), torchscript "
                             "(model.ts), export (torch.export programs), eager; default "
                             "auto, the fastest the export and the installed packages allow")


def load(args: argparse.Namespace) -> LoadedExport:
    """The model the flags name (--model, --export-dir, the default), with their engine."""
    from dataclasses import replace

    from gptmini.inference.aoti import is_built
    from gptmini.inference.loading import load_model

    exported = load_model(args.model or args.export_dir or default_export_dir())
    engine = getattr(args, "engine", "auto")
    if engine == "aoti" and not is_built(exported.directory):
        print("note: compiling the export's programs for this CPU with AOTInductor (once; "
              "a minute or more)", file=sys.stderr)
    return replace(exported, engine=engine)
