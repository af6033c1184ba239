"""`ProgramGenerator`: KV-cache generation on a prefill and a decode function (the export's
torch.export programs, or the ONNX graph through gptmini.inference.onnx) under the library's
generation loop (gptmini.inference.generation.token_stream)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gptmini.model import sample_next, seeded_generator, window_keep


def graph_runner(program: torch.export.ExportedProgram) -> Callable[..., Any]:
    """A function of the program's user inputs that runs its graph directly on its weights.
    (`program.module()` adds per-call input checks and an attribute lookup per weight that
    cost several times the compute of one token of a small model; the loop in
    `ProgramGenerator` only makes inputs the programs accept.)"""
    from torch.export.graph_signature import InputKind

    state = {**program.state_dict, **program.constants}
    specs = program.graph_signature.input_specs
    lifted = [state[spec.target] for spec in specs if spec.kind != InputKind.USER_INPUT]
    if any(spec.kind != InputKind.USER_INPUT for spec in specs[len(lifted):]):
        raise ValueError("unexpected torch.export program: weights after the inputs")
    forward = program.graph_module.forward
    return lambda *inputs: forward(*lifted, *inputs)


class ProgramGenerator:
    """KV-cache generation on the export's torch.export programs (prefill.pt2, decode.pt2)
    with the Python loop of `gptmini.inference.generation.token_stream`: the same prefill /
    extend / sample / new_generator steps as GPT, so the same seed gives the same tokens.
    Its cache is a one-element list holding the programs' latest cache tensor."""

    def __init__(self, prefill: torch.export.ExportedProgram | Callable[..., Any],
                 decode: torch.export.ExportedProgram | Callable[..., Any],
                 block_size: int) -> None:
        # Programs, or functions of the same inputs and outputs (another engine's steps).
        self._prefill, self._decode = (
            graph_runner(step) if isinstance(step, torch.export.ExportedProgram) else step
            for step in (prefill, decode))
        self.block_size = block_size
        self.window_keep = window_keep(block_size)
        self.device = torch.device("cpu")

    def prefill(self, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor],
                                                  torch.Tensor]:
        if idx.size(1) == 0:
            raise ValueError("generation needs at least one token to start from")
        window = idx[:, -self.block_size:]
        logits, cache = self._prefill(window)
        return logits, [cache], window

    def extend(self, window: torch.Tensor, cache: list[torch.Tensor], next_id: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """As GPT.extend: one token while the window has room, else the last window_keep
        tokens prefilled again."""
        pos = window.shape[1]
        window = self._append(window, next_id)
        if pos < self.block_size:
            logits, cache[0] = self._decode(next_id, cache[0])
            return logits, window
        window = window[:, -self.window_keep:]
        logits, cache[0] = self._prefill(window)
        return logits, window

    @staticmethod
    def _append(window: Any, next_id: torch.Tensor) -> Any:
        """The window with next_id (B, 1) after it."""
        return torch.cat([window, next_id], dim=1)

    def sample(self, logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
               generator: torch.Generator | None) -> torch.Tensor:
        return sample_next(logits, temperature, top_k, top_p, generator)

    def new_generator(self, seed: int) -> torch.Generator | None:
        return seeded_generator(seed, self.device)
