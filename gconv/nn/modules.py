"""Thin modules over :mod:`gconv.ops`: ``Softplus``, ``EEHead`` and ``convert_activations``."""
from __future__ import annotations

import math

import torch
from torch import nn

from gconv import ops
from gconv.ops._common import check_zeta


class Softplus(nn.Module):
    """softplus_ζ(z) = log(1 + exp(ζz))/ζ — the papers' real-analytic stand-in for ReLU (ζ = 100).

    Design notes §2.1; forward and backward are single fused passes (:func:`gconv.ops.softplus`),
    finite for every input. Any shape, layout (channels_last is kept) and floating dtype.
    """

    def __init__(self, zeta: float = 100.0):
        super().__init__()
        self.zeta = check_zeta(zeta, "Softplus: zeta")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return ops.softplus(z, self.zeta)

    def extra_repr(self) -> str:
        return f"zeta={self.zeta:g}"


class EEHead(nn.Module):
    """The last two layers of the EE wrapper (seed 000, eq. 3.4): per-output blocks, constant neuron.

    f_j(z) = Σ_k V[j,k] · sigmoid(ζ′·R[j,k]·z̃) · (W[j,k]·z̃),  z̃ = [z, 1],  for z of shape (B, m).

    Parameters: ``weight`` W ∈ R^{m_y×m_H×(m+1)} (θ_(H−1); the last column multiplies the constant
    neuron), ``output_weight`` V ∈ R^{m_y×m_H} (W^(H)).
    Buffer ``gate_weight`` R: ``None`` before :meth:`freeze_gate` (self-gated unit, R = W with the
    gradient through both paths), a frozen copy of W after it (Algorithm 1 line 10) — a buffer, so
    optimizers never see it and ``state_dict`` carries it.

    Initialisation: W ~ N(0, 2/(m+1)) (He, as in the paper's safe-exploration check), V ~ U(±1/√m_H).
    In the exploitation phase train only ``weight`` (``output_weight.requires_grad_(False)``); the
    backward then does no work for V, R or — if the input does not require grad — z.
    """

    def __init__(self, in_features: int, out_features: int, width: int, gate_zeta: float = 1.0,
                 device=None, dtype=None):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"EEHead: {name} must be a positive int, got {v!r}")
        self.in_features, self.out_features, self.width = in_features, out_features, width
        self.gate_zeta = check_zeta(gate_zeta, "EEHead: gate_zeta")
        fk = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, width, in_features + 1, **fk))
        self.output_weight = nn.Parameter(torch.empty(out_features, width, **fk))
        self.register_buffer("gate_weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
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

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if isinstance(z, torch.Tensor) and z.dim() == 2 and z.shape[1] != self.in_features:
            raise ValueError(f"EEHead: expected input of shape (batch, {self.in_features}), got {tuple(z.shape)}")
        return ops.ee_head(z, self.weight, self.output_weight, self.gate_weight, self.gate_zeta)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # the gate state travels with the checkpoint: a frozen checkpoint freezes this module and
        # a self-gated one unfreezes it
        key = prefix + "gate_weight"
        if key in state_dict and self.gate_weight is None:
            self.gate_weight = torch.empty_like(self.weight, requires_grad=False)
        elif key not in state_dict and self.gate_weight is not None:
            self.gate_weight = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, width={self.width}, "
                f"gate_zeta={self.gate_zeta:g}, gate_frozen={self.gate_frozen}")


RELU_FAMILY = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.Softplus)


def convert_activations(model: nn.Module, zeta: float = 100.0, classes=RELU_FAMILY) -> nn.Module:
    """Replace every activation module of the given ``classes`` in ``model`` by :class:`Softplus` (ζ).

    Walks all submodules (Sequential, ModuleList, ModuleDict and custom containers alike) and
    replaces in place; a module instance shared by several parents gets one shared Softplus.
    Returns ``model`` — or a new ``Softplus`` when ``model`` itself is one of ``classes``.

    Args:
        model: any ``nn.Module``.
        zeta: ζ of the replacement (100 in the papers). It replaces torch's ``nn.Softplus`` β too.
        classes: a module class or tuple of classes to replace; default the ReLU family
            ``(ReLU, ReLU6, LeakyReLU, PReLU, RReLU, Softplus)``. Note that LeakyReLU / PReLU
            slopes, ReLU6's cap and RReLU's noise are *not* carried over: every replaced module
            becomes the smooth ReLU stand-in of the papers. PReLU's learnable slope disappears
            from ``parameters()``; build optimizers after converting.

    What this cannot replace (change the model's code instead): functional calls inside
    ``forward`` (``F.relu(x)``, ``torch.relu(x)``, ``x.relu()``, ``F.leaky_relu``, ...), in-place
    tensor methods (``x.relu_()``, ``F.relu(x, inplace=True)``), activations fused into other
    modules (e.g. ``nn.TransformerEncoderLayer(activation="relu")``, quantised or scripted
    modules), and modules of classes not listed in ``classes`` (e.g. GELU, SiLU, ELU).
    """
    zeta = check_zeta(zeta, "convert_activations: zeta")
    if isinstance(classes, type):
        classes = (classes,)
    classes = tuple(classes)
    if not classes or not all(isinstance(c, type) and issubclass(c, nn.Module) for c in classes):
        raise TypeError(f"convert_activations: classes must be nn.Module subclasses, got {classes!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert_activations: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, classes):
        return Softplus(zeta)
    memo: dict[int, Softplus] = {}
    _convert(model, zeta, classes, memo, set())
    return model


def _convert(module: nn.Module, zeta: float, classes, memo: dict, seen: set) -> None:
    if id(module) in seen:
        return
    seen.add(id(module))
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        if isinstance(child, classes):
            new = memo.get(id(child))
            if new is None:
                new = memo[id(child)] = Softplus(zeta)
            module._modules[name] = new
        else:
            _convert(child, zeta, classes, memo, seen)
