"""Thin modules over :mod:`gconv.ops`."""
from __future__ import annotations

import math

import torch
from torch import nn

from gconv import ops


class Softplus(nn.Module):
    """softplus_ζ(z) = log(1 + exp(ζz))/ζ — the papers' real-analytic stand-in for ReLU (ζ = 100)."""

    def __init__(self, zeta: float = 100.0):
        super().__init__()
        if not (zeta > 0 and math.isfinite(zeta)):
            raise ValueError(f"Softplus: zeta must be a positive finite number, got {zeta!r}")
        self.zeta = float(zeta)

    def forward(self, z):
        return ops.softplus(z, self.zeta)

    def extra_repr(self):
        return f"zeta={self.zeta:g}"


class EEHead(nn.Module):
    """The last two layers of the EE wrapper (seed 000, eq. 3.4), per-output blocks, constant neuron.

    Parameters: ``weight`` W ∈ R^{m_y×m_H×(m+1)} (θ_(H−1)), ``output_weight`` V ∈ R^{m_y×m_H} (W^(H)).
    Buffer ``gate_weight`` R: absent before :meth:`freeze_gate` (the unit is self-gated, R = W),
    a frozen copy of W after it.
    """

    def __init__(self, in_features: int, out_features: int, width: int, gate_zeta: float = 1.0,
                 device=None, dtype=None):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features), ("width", width)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"EEHead: {name} must be a positive int, got {v!r}")
        self.in_features, self.out_features, self.width = in_features, out_features, width
        self.gate_zeta = float(gate_zeta)
        fk = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, width, in_features + 1, **fk))
        self.output_weight = nn.Parameter(torch.empty(out_features, width, **fk))
        self.register_buffer("gate_weight", None)
        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            self.weight.normal_(0.0, math.sqrt(2.0 / (self.in_features + 1)))
            bound = 1.0 / math.sqrt(self.width)
            self.output_weight.uniform_(-bound, bound)

    @property
    def gate_frozen(self) -> bool:
        return self.gate_weight is not None

    @torch.no_grad()
    def freeze_gate(self) -> "EEHead":
        """Algorithm 1, line 10: R ← θ_(H−1) now, frozen. Idempotent; the output is unchanged."""
        if self.gate_weight is None:
            self.gate_weight = self.weight.detach().clone()
        return self

    def forward(self, z):
        return ops.ee_head(z, self.weight, self.output_weight, self.gate_weight, self.gate_zeta)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "gate_weight"
        if key in state_dict and self.gate_weight is None:
            self.gate_weight = torch.empty_like(self.weight)
        elif key not in state_dict and self.gate_weight is not None:
            self.gate_weight = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, width={self.width}, "
                f"gate_zeta={self.gate_zeta:g}, gate_frozen={self.gate_frozen}")


_RELU_FAMILY = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.Softplus)


def convert_activations(model: nn.Module, zeta: float = 100.0) -> nn.Module:
    """Replace ReLU-family modules in ``model`` by :class:`Softplus` (in place); returns ``model``."""
    for name, child in list(model.named_children()):
        if isinstance(child, _RELU_FAMILY):
            setattr(model, name, Softplus(zeta))
        else:
            convert_activations(child, zeta)
    return model
