"""Running a stage script: path variables made absolute, params.yaml validated before any
work, and expected failures turned into one clear line on stderr and a non-zero exit
(2 for a bad param, 1 for any other expected failure, 128 + the signal's number for a
stage stopped by Ctrl-C or SIGTERM after saving what it needs to resume)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gptmini.core.config import ConfigError, Params, load_params
from gptmini.core.env import resolve_path_variables


class StageError(RuntimeError):
    """An expected failure of a stage (a failed download, a diverged run), said in one line."""


class Interrupted(KeyboardInterrupt):
    """A stage stopped by a signal once it saved what a rerun resumes from, said in one
    line. A KeyboardInterrupt, so that its MLflow run ends KILLED (`mlflow_run`)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def run(main: Callable[[Params], Any], params_file: str | Path = "params.yaml") -> None:
    resolve_path_variables()
    try:
        main(load_params(params_file))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except Interrupted as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        sys.exit(128 + exc.signum)
