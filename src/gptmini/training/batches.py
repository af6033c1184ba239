"""Where each training batch comes from: random windows (each drawn anywhere, with
replacement) or epochs (every window of a grid once per epoch, in a fresh order)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _windows(tokens: np.ndarray, starts: np.ndarray, offsets: np.ndarray,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    windows = torch.from_numpy(tokens[starts[:, None] + offsets].astype(np.int64))
    if device.type == "cuda":
        windows = windows.pin_memory().to(device, non_blocking=True)
    else:
        windows = windows.to(device)
    return windows[:, :-1], windows[:, 1:]


class BatchSampler:
    """Random contiguous windows of a token array (a memmap: nothing is read up front)."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int) -> None:
        if len(tokens) <= block_size:
            raise ValueError(f"{len(tokens)} tokens cannot fill one window of {block_size} + 1")
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.rng = np.random.default_rng(seed)
        self._offsets = np.arange(block_size + 1)

    def sample(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)
        return _windows(self.tokens, starts, self._offsets, device)

    @property
    def state(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        self.rng.bit_generator.state = value


class EpochSampler:
    """Non-overlapping windows, each read once per epoch: an epoch picks a random grid
    offset (so the window boundaries move between epochs) and a random order of the
    grid's windows. The state is the generator as the epoch began plus the position in
    it, so a resumed run draws the same batches as one never stopped."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int) -> None:
        if len(tokens) <= 2 * block_size + 1:
            raise ValueError(f"{len(tokens)} tokens cannot fill two windows of {block_size} + 1")
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.rng = np.random.default_rng(seed)
        self._offsets = np.arange(block_size + 1)
        self._new_epoch()

    def _new_epoch(self) -> None:
        self._epoch_state = self.rng.bit_generator.state
        offset = int(self.rng.integers(0, self.block_size))
        starts = np.arange(offset, len(self.tokens) - self.block_size, self.block_size)
        self._order = starts[self.rng.permutation(len(starts))]
        self._position = 0

    def sample(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        picked: list[np.ndarray] = []
        needed = self.batch_size
        while needed:
            if self._position == len(self._order):
                self._new_epoch()
            take = self._order[self._position:self._position + needed]
            picked.append(take)
            self._position += len(take)
            needed -= len(take)
        return _windows(self.tokens, np.concatenate(picked), self._offsets, device)

    @property
    def state(self) -> dict[str, Any]:
        return {"epoch_rng": self._epoch_state, "position": self._position}

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        self.rng.bit_generator.state = value["epoch_rng"]
        self._new_epoch()
        self._position = int(value["position"])


# train.data_order's values: the sampler each one trains on.
SAMPLERS: dict[str, type[BatchSampler] | type[EpochSampler]] = {
    "random": BatchSampler, "epochs": EpochSampler}
