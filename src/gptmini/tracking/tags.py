"""What a run is tagged with (provenance) and how nested params become MLflow's flat names."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30,
                             cwd=Path.cwd())
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance_tags() -> dict[str, str]:
    """Git commit and dirtiness, the DVC experiment name, the code this process imported
    (where from, and a hash of its sources), and library versions."""
    import dvc
    import mlflow
    import tiktoken
    import torch

    import gptmini
    from gptmini.core.hashing import source_sha256

    package = Path(gptmini.__file__).parent

    tags = {
        "git.commit": _git("rev-parse", "HEAD") or "unknown",
        "git.dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower(),
        "code.path": str(package),
        "code.src_sha256": source_sha256(package),
        "version.torch": torch.__version__,
        "version.mlflow": mlflow.__version__,
        "version.dvc": dvc.__version__,
        "version.tiktoken": getattr(tiktoken, "__version__", "unknown"),
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
