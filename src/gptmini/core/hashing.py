"""Hashes: of a file's bytes, and of a model's weights whatever file they came from."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def source_sha256(package_dir: str | Path) -> str:
    """A hash of a package's Python sources (relative paths and bytes, in path order): what
    code a run imported, comparable with the same hash of any checkout's src/gptmini."""
    root = Path(package_dir)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(f"{path.relative_to(root).as_posix()}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """A hash of the weights alone (names, dtypes, shapes, values), independent of how a
    file was serialised: equal hashes mean bit-identical models."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
