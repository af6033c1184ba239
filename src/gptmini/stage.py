"""Running a stage script: validate params.yaml first, turn expected failures into one
clear line on stderr and a non-zero exit."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from gptmini.config import ConfigError, Params, load_params
from gptmini.download import DownloadError


class StageError(RuntimeError):
    """An expected failure of a stage, reported as one line."""


def run(main: Callable[[Params], None], params_file: str | Path = "params.yaml") -> None:
    try:
        params = load_params(params_file)
        main(params)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (DownloadError, StageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
