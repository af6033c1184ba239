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
import pickle
import shutil
from pathlib import Path
from typing import Any, NamedTuple

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


class SavedState(NamedTuple):
    """What a resumed run starts from: the trainer's state and the MLflow run it logs to."""

    state: dict[str, Any]
    run_id: str | None


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

    def load(self) -> SavedState | None:
        """The last complete save, or None: when there is
        none, and when the saved state cannot be this run's (other params or data, another
        number of processes, an unreadable manifest, a missing or truncated state file).
        Each refusal is one line on stdout and a fresh start; the next save replaces the
        state. Every process takes the same decision."""
        if not self.dir.exists():
            return None
        loaded, reason = self._read()
        if self.dist.world_size > 1:  # one process's bad file restarts them all
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            ok = torch.tensor([0 if loaded is None else 1], device=device)
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
            if not ok.item():
                loaded, reason = None, reason or "another process's state cannot be read"
        if loaded is None:
            if reason and self.dist.is_main:
                print(f"{self.dir}: {reason}; starting over (delete {self.dir} to discard "
                      f"it by hand)")
            return None
        self.saved_step = loaded.state["step"]
        return loaded

    def _read(self) -> tuple[SavedState | None, str | None]:
        """The saved state or None, and why not."""
        try:
            manifest = json.loads(self.manifest.read_text())
        except FileNotFoundError:
            return None, None if not any(self.dir.iterdir()) else "no manifest names a state"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return None, f"unreadable {self.manifest.name} ({type(exc).__name__})"
        step = manifest.get("step") if isinstance(manifest, dict) else None
        if not isinstance(step, int):
            return None, f"{self.manifest.name} names no step"
        saved_ws = manifest.get("world_size")
        if saved_ws != self.dist.world_size:
            return None, (f"saved state is for {saved_ws} process(es), this run has "
                          f"{self.dist.world_size}")
        if manifest.get("fingerprint") != self.fingerprint:
            return None, "saved state is for other params or data"
        path = self._file(step)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return None, f"{path.name}, named by {self.manifest.name}, is missing"
        except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
            return None, f"{path.name} is truncated or corrupt ({type(exc).__name__})"
        if not isinstance(state, dict) or state.get("step") != step:
            return None, f"{path.name} does not hold the state of step {step}"
        return SavedState(state, manifest.get("run_id")), None

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
