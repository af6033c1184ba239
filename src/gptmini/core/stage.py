"""Running a stage script: path variables made absolute, params.yaml validated before any
work, and expected failures turned into one clear line on stderr and a non-zero exit
(2 for a bad param, 1 for any other expected failure)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gptmini.core.config import ConfigError, Params, load_params
from gptmini.core.env import resolve_path_variables


class StageError(RuntimeError):
    """An expected failure of a stage (a failed download, a diverged run), said in one line."""


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
