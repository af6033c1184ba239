"""The pipeline's MLflow run id, left by the train stage for the stages after it."""

from __future__ import annotations

import json
from pathlib import Path

from gptmini.core import paths
from gptmini.core.atomic import write_json


def read_run_id(run_json: str | Path = paths.RUN_JSON) -> str | None:
    """The run id the train stage left, or None when there is none to reopen."""
    try:
        return json.loads(Path(run_json).read_text())["run_id"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return None


def write_run_id(run_id: str, run_json: str | Path = paths.RUN_JSON) -> None:
    """Leave the run id for the later stages, outside every DVC output (it is random)."""
    write_json(run_json, {"run_id": run_id})
