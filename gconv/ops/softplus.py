"""softplus(z, ζ) = log(1 + exp(ζ z)) / ζ   (design notes §2.1; ζ = 100 in every paper).

Stable form: (max(ζz, 0) + log1p(exp(−|ζz|))) / ζ, derivative sigmoid(ζz).
"""
from __future__ import annotations

import torch

from gconv import _backends as B


def softplus_reference(z: torch.Tensor, zeta: float = 100.0) -> torch.Tensor:
    """Plain-PyTorch reference (CPU fallback and test oracle); autograd through torch ops."""
    t = z * zeta
    return (torch.clamp_min(t, 0) + torch.log1p(torch.exp(-t.abs()))) / zeta


for _impl, _chk in (("torch", B.check_torch),):
    B.register("softplus", _impl, _chk)


def softplus(z: torch.Tensor, zeta: float = 100.0) -> torch.Tensor:
    """softplus_ζ(z), elementwise; gradient sigmoid(ζ z)."""
    return softplus_reference(z, zeta)
