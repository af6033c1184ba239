"""ONNX Runtime generation: `OnnxGenerator` runs the export's step graph (step.onnx, written
by gptmini.export.onnx) with `onnxruntime` under the library's loop and sampling
(gptmini.inference.generation).

One graph is both the prefill and the decode: `ids` (B, S) at positions `length` ..
`length` + S - 1 after a cache of `length` positions. The cache is one key and one value
tensor a layer as big as the context (past_key_i, past_value_i in; present_key_i,
present_value_i out), and the attention is ONNX Runtime's GroupQueryAttention. Bound to the
same buffer as past and present through I/O binding, that kernel writes each step's keys
and values in place: a token costs its arithmetic, not a copy of the cache.

`onnxruntime` is imported only when a function needs it: the export's torch-alone path
(model.ts, the .pt2 programs) never imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gptmini.export.layout import STEP_ONNX
from gptmini.inference.programs import ProgramGenerator
from gptmini.model import sample_next


def has_onnx(directory: Path) -> bool:
    return (directory / STEP_ONNX).is_file()


class _IOBinding:
    """One generation's cache on ONNX Runtime: a buffer per layer's keys and one per its
    values, (B, n_head, block_size, head_size), each bound as both past and present, and a
    logits buffer, all in one I/O binding made once; `length` is the positions filled.

    A decode step's inputs (one token a row, the length) are arrays bound once and written
    in place, not bound anew each token."""

    def __init__(self, session: Any, batch: int, shape: tuple[int, ...], vocab: int) -> None:
        import numpy as np
        import onnxruntime as ort

        self.session, self.length = session, 0
        self.binding = session.io_binding()
        self.buffers = [ort.OrtValue.ortvalue_from_shape_and_type((batch, *shape), np.float32)
                        for _ in range(len(session.get_inputs()) - 2)]
        names = [arg.name.removeprefix("past_") for arg in session.get_inputs()[2:]]
        for name, buffer in zip(names, self.buffers, strict=True):
            self.binding.bind_ortvalue_input(f"past_{name}", buffer)
            self.binding.bind_ortvalue_output(f"present_{name}", buffer)
        self.logits = np.empty((batch, vocab), np.float32)
        self.binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self.logits))
        self.step_ids, self.step_length = np.empty((batch, 1), np.int64), np.empty((), np.int64)
        self.step_inputs = {"ids": ort.OrtValue.ortvalue_from_numpy(self.step_ids),
                            "length": ort.OrtValue.ortvalue_from_numpy(self.step_length)}
        self.step_bound = False

    def run(self, ids: Any, length: int) -> Any:
        """ids (B, S), a numpy array, after `length` cached positions -> the logits (B, V)
        after the last of them, a numpy array (a copy: the buffer is the next step's)."""
        import numpy as np

        if ids.shape[1] == 1:  # a decode step: into the arrays bound for it
            self.step_ids[...] = ids
            self.step_length[...] = length
            if not self.step_bound:
                for name, value in self.step_inputs.items():
                    self.binding.bind_ortvalue_input(name, value)
                self.step_bound = True
        else:
            self.binding.bind_cpu_input("ids", ids)  # copied: any strides
            self.binding.bind_cpu_input("length", np.array(length, np.int64))
            self.step_bound = False
        self.session.run_with_iobinding(self.binding)
        self.length = length + ids.shape[1]
        return self.logits.copy()


class OnnxGenerator(ProgramGenerator):
    """KV-cache generation on step.onnx with ONNX Runtime on the CPU: ProgramGenerator's
    steps (those `token_stream` calls) with the graph as its prefill (length 0, a new cache)
    and its decode (one token after the cache's length), so the same seed gives the same
    tokens as the other engines up to float rounding.

    Its logits, window and sampled ids are numpy arrays, which ONNX Runtime takes as they
    are (`token_stream` reads a sampled id with `.item()`, as from a tensor; `extend` takes
    a tensor too): with ONNX Runtime's step this fast, the torch calls around it (an argmax,
    a concatenation, conversions) were a large part of the loop's time around each step
    (docs/speed.md). Sampling at a temperature is sample_next's, on a
    tensor sharing memory."""

    def __init__(self, directory: Path, block_size: int, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # As many threads as torch has been given (the CLI's and the app's one by default:
        # one token is too small a job to split), and no spinning between steps.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(directory / STEP_ONNX), options,
                                       providers=["CPUExecutionProvider"])
        past = session.get_inputs()[2].shape  # [batch, n_head, block_size, head_size]
        vocab = session.get_outputs()[0].shape[1]

        def prefill(ids: Any) -> tuple[Any, _IOBinding]:
            cache = _IOBinding(session, ids.shape[0], tuple(past[1:]), vocab)
            return cache.run(_array(ids), 0), cache

        def decode(next_id: Any, cache: _IOBinding) -> tuple[Any, _IOBinding]:
            return cache.run(_array(next_id), cache.length), cache

        super().__init__(prefill, decode, block_size)

    def prefill(self, idx: torch.Tensor) -> tuple[Any, list[_IOBinding], Any]:
        logits, cache, window = super().prefill(idx)
        return logits, cache, _array(window)

    def sample(self, logits: Any, temperature: float, top_k: int, top_p: float,
               generator: torch.Generator | None) -> Any:
        if temperature == 0.0:  # numpy's argmax takes the first maximum, as torch's does
            return logits.argmax(axis=-1, keepdims=True)
        return sample_next(torch.from_numpy(logits), temperature, top_k, top_p,
                           generator).numpy()

    @staticmethod
    def _append(window: Any, next_id: Any) -> Any:
        import numpy as np

        return np.concatenate([window, _array(next_id)], axis=1)


def _array(ids: Any) -> Any:
    """ids given as a numpy array or as a CPU tensor, as a numpy array (no copy)."""
    return ids.numpy() if isinstance(ids, torch.Tensor) else ids
