"""Muon whose Newton-Schulz iterations run in a dtype the device computes natively.

`torch.optim.Muon` (torch 2.13) casts every update to bfloat16 for its Newton-Schulz
iterations, hard-coded. On a CPU without native bf16 (AVX2 only) a bf16 matmul is
emulated, and a Muon step costs many times its float32 twin (docs/speed.md). torch's class takes
no dtype, so this subclass repeats its `step` with one difference: the dtype of the
iterations (`ns_dtype`). Everything else is torch's: the momentum, the Nesterov blend, the
coefficients, the spectral-norm scaling, the learning-rate adjustment and the decoupled
weight decay; `tests/test_train.py` checks that with ``ns_dtype=torch.bfloat16`` a step
equals `torch.optim.Muon`'s bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim._muon import _adjust_lr


def ns_dtype_for(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The Newton-Schulz dtype of a run training in `dtype` on `device`: bfloat16 on CUDA
    (torch's choice) and on a CPU run opted into bfloat16 whose CPU multiplies it natively
    (AVX512-BF16, AMX); float32 otherwise, so a float32 CPU run is the same on every CPU."""
    from gptmini.core.device import cpu_has_fast_bf16

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and dtype == torch.bfloat16 and cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def zeropower_via_newtonschulz(grad: Tensor, coefficients: tuple[float, float, float],
                               steps: int, eps: float, dtype: torch.dtype) -> Tensor:
    """torch's quintic Newton-Schulz orthogonalisation of a 2-D `grad`, in `dtype`. The
    input is never written to (torch's own version scales its bf16 copy in place, which in
    float32 would be the caller's tensor)."""
    a, b, c = coefficients
    ortho = grad.to(dtype)
    tall = grad.size(0) > grad.size(1)
    if tall:
        ortho = ortho.T
    ortho = ortho / ortho.norm().clamp(min=eps)
    for _ in range(steps):
        gram = ortho @ ortho.T
        update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        ortho = torch.addmm(ortho, update, ortho, beta=a)
    return ortho.T if tall else ortho


class Muon(torch.optim.Muon):
    """`torch.optim.Muon` with the Newton-Schulz dtype as a parameter (`ns_dtype`; its
    state dict is torch's, so a state moves between the two)."""

    def __init__(self, params, *, ns_dtype: torch.dtype = torch.float32, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            bufs: list[Tensor] = []
            self._init_group(group, params, grads, bufs)
            lr, momentum, decay = float(group["lr"]), group["momentum"], group["weight_decay"]
            for param, grad, buf in zip(params, grads, bufs, strict=True):
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = zeropower_via_newtonschulz(update, group["ns_coefficients"],
                                                    group["ns_steps"], group["eps"],
                                                    self.ns_dtype)
                param.mul_(1 - lr * decay)
                param.add_(update, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], param.shape))
        return loss
