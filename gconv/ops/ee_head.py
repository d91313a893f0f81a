"""The EE head of seed 000, eq. 3.4 (Section 3.2.2; Algorithm 1 line 10).

    f_j(z) = Σ_k V[j,k] · g(R[j,k]·z̃) · (W[j,k]·z̃),   z̃ = [z, 1],   g(u) = sigmoid(ζ′u)

W = ``weight`` (m_y, m_H, m+1) is θ_(H−1); V = ``output_weight`` (m_y, m_H) is W^(H).
Before the switch R = W (self-gated unit σ(q, q′) = σ̄(qq′)∘(qq′)); after it R = ``gate_weight``,
a frozen copy of W (σ_R).
"""
from __future__ import annotations

import torch

from gconv import _backends as B


def ee_head_reference(z: torch.Tensor, weight: torch.Tensor, output_weight: torch.Tensor,
                      gate_weight: torch.Tensor | None = None, gate_zeta: float = 1.0) -> torch.Tensor:
    """Plain-PyTorch reference of eq. 3.4 (materialises the B×m_y×m_H pre-activations)."""
    zt = torch.cat([z, z.new_ones(z.shape[0], 1)], dim=1)
    u = torch.einsum("bi,jki->bjk", zt, weight)
    r = u if gate_weight is None else torch.einsum("bi,jki->bjk", zt, gate_weight)
    return torch.einsum("bjk,jk->bj", torch.sigmoid(gate_zeta * r) * u, output_weight)


B.register("ee_head", "torch", B.check_torch)


def ee_head(z, weight, output_weight, gate_weight=None, gate_zeta: float = 1.0):
    """Eq. 3.4 for a batch ``z`` (B, m); returns (B, m_y)."""
    return ee_head_reference(z, weight, output_weight, gate_weight, gate_zeta)
