"""The resume state of a training run, kept outside DVC's outputs.

DVC deletes a stage's outputs before it runs the stage, so the state lives in
``data/train_state/``, which no stage declares. Each process writes its own file
atomically; then the main process writes ``manifest.json`` naming the step, so a crash
between two files never pairs states of different steps. A state is only resumed when
its fingerprint (params, tokenizer, token files) matches the run being started.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gptmini.core.atomic import write_json, write_torch
from gptmini.core.device import Distributed
from gptmini.core.hashing import sha256_file


def fingerprint(config: dict[str, Any], files: list[Path]) -> str:
    """What a resumable state must agree with: the config and the bytes it trains on."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for path in files:
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


class ResumeStore:
    def __init__(self, directory: str | Path, fingerprint: str, dist_info: Distributed) -> None:
        self.dir, self.fingerprint, self.dist = Path(directory), fingerprint, dist_info
        self.saved_step: int | None = None

    @property
    def manifest(self) -> Path:
        return self.dir / "manifest.json"

    def _file(self, step: int) -> Path:
        return self.dir / f"rank{self.dist.rank}-step{step}.pt"

    def _barrier(self) -> None:
        if self.dist.world_size > 1:
            dist.barrier()

    def load(self) -> tuple[dict[str, Any], str | None] | None:
        """(trainer state, MLflow run id) of the last complete save, or None."""
        try:
            manifest = json.loads(self.manifest.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if manifest.get("fingerprint") != self.fingerprint or \
                manifest.get("world_size") != self.dist.world_size:
            if self.dist.is_main:
                print(f"{self.dir}: saved state is for other params or data; starting over")
            return None
        state = torch.load(self._file(manifest["step"]), map_location="cpu", weights_only=True)
        self.saved_step = manifest["step"]
        return state, manifest.get("run_id")

    def save(self, state: dict[str, Any], run_id: str | None) -> None:
        step = state["step"]
        write_torch(self._file(step), state)
        self._barrier()
        if self.dist.is_main:
            write_json(self.manifest, {"step": step, "fingerprint": self.fingerprint,
                                       "world_size": self.dist.world_size, "run_id": run_id})
        self._barrier()
        for old in self.dir.glob(f"rank{self.dist.rank}-step*.pt"):
            if old != self._file(step):
                old.unlink(missing_ok=True)
        self.saved_step = step

    def clear(self) -> None:
        self._barrier()
        if self.dist.is_main:
            shutil.rmtree(self.dir, ignore_errors=True)
