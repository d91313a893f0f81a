"""The exploration–exploitation (EE) wrapper — seed 000 (Kawaguchi, Zhang & Deng), Algorithm 1.

    line 2     modify the base model (§3.2.2): the last two layers become the EE head, eq. (3.4)
    lines 3–7  exploration: train all layers with G for t = 0 … τ−1
    line 9     θ ← θ + ε·δ, δ ~ N(0, I_d), once
    line 10    σ_j ← σ_{R^{(j)}} with R^{(j)} = θ^τ_{(H−1,j)}: :meth:`EEHead.freeze_gate`
    lines 11–13 exploitation: train only θ_{(H−1)} (the head's ``weight``) with G̃
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from gconv.models._base import seeded
from gconv.nn import EEHead, Softplus
from gconv.train._phased import PhasedTrainer, check_positive, derived_seed

_ACTIVATION_TYPES = (Softplus,)


def _is_activation(m: nn.Module) -> bool:
    if any(True for _ in m.parameters()):
        return False
    return (isinstance(m, _ACTIVATION_TYPES) or type(m).__module__ == "torch.nn.modules.activation"
            or isinstance(m, nn.modules.dropout._DropoutNd))


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    if "." in name:
        pname, attr = name.rsplit(".", 1)
        return model.get_submodule(pname), attr
    return model, name


def _find_output_layer(model: nn.Module, output_layer: str | None) -> tuple[str, nn.Module]:
    modules = dict(model.named_modules())
    if output_layer is not None:
        if output_layer not in modules or output_layer == "":
            raise ValueError(f"EEWrapper: output_layer {output_layer!r} is not a module of the model "
                             f"(modules: {', '.join(n for n in list(modules)[1:8])}, ...)")
        mod = modules[output_layer]
        if not isinstance(mod, (nn.Linear, EEHead)):
            raise ValueError(f"EEWrapper: output_layer {output_layer!r} is a {type(mod).__name__}; the EE wrapper "
                             "replaces a fully connected (nn.Linear) output layer or uses an existing EEHead")
        return output_layer, mod
    heads = [(n, m) for n, m in modules.items() if isinstance(m, EEHead)]
    if len(heads) > 1:
        raise ValueError(f"EEWrapper: the model has {len(heads)} EEHead modules ({', '.join(n for n, _ in heads)}); "
                         "pass output_layer= to choose one")
    if heads:
        return heads[0]
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module) and "head" in modules:
        if not isinstance(head, nn.Linear):
            raise ValueError(f"EEWrapper: model.head is a {type(head).__name__}, not a usable last layer: the EE "
                             "wrapper needs a fully connected (nn.Linear) output layer to replace with an EEHead")
        return "head", head
    linears = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"EEWrapper: {type(model).__name__} has no usable last layer: no nn.Linear output layer "
                         "found (pass output_layer= naming it, or put a gconv.nn.EEHead in the model)")
    return linears[-1]


def _preceding(model: nn.Module, name: str) -> tuple[nn.Sequential | None, list[tuple[str, nn.Module]]]:
    """The layers that run right before the output layer, when the structure makes that knowable:
    the output layer's Sequential parent, or a zoo model's ``trunk`` before its ``head``."""
    parent, attr = _parent(model, name)
    if isinstance(parent, nn.Sequential):
        items = list(parent.named_children())
        k = [n for n, _ in items].index(attr)
        return parent, items[:k]
    if name == "head" and isinstance(getattr(model, "trunk", None), nn.Sequential):
        return model.trunk, list(model.trunk.named_children())
    return None, []


def add_ee_head(model: nn.Module, *, n: int | None = None, width: int | None = None,
                output_layer: str | None = None, merge: bool | None = None, gate_zeta: float = 1.0,
                seed: int | None = 0) -> dict:
    """Algorithm 1, line 2 (seed 000 §3.2.2): put a :class:`gconv.nn.EEHead` at the end of ``model``
    (in place) and return a description of what was done.

    * The model already has one EEHead (or ``output_layer`` names one): nothing changes.
    * The last two layers are fully connected — ``Linear(m, m_H) → activation → Linear(m_H, m_y)``
      inside one ``nn.Sequential`` (or a zoo model's trunk → head) — and ``merge`` is not False:
      both become one ``EEHead(m, m_y, width=m_H)`` (the paper's case; z̄ is the input of the first).
    * Otherwise the output ``nn.Linear(m, m_y)`` is replaced by ``EEHead(m, m_y, width)`` on its
      input, i.e. fully connected last layers are added; ``width`` defaults to
      m_H = ⌈2n / m_{H−1}⌉ with m_{H−1} = m + 1 (the constant neuron; Table 2), so ``n`` (the
      number of training samples) is needed.

    The new head is initialised under ``seed`` (None: the global RNG) on the replaced layer's
    device and dtype.
    """
    name, out = _find_output_layer(model, output_layer)
    if isinstance(out, EEHead):
        return {"kind": "existing_ee_head", "name": name, "in_features": out.in_features,
                "out_features": out.out_features, "m_H": out.width, "m_H_minus_1": out.in_features + 1,
                "replaced": []}
    container, before = _preceding(model, name)
    tail = []
    for nm, m in reversed(before):
        if _is_activation(m):
            tail.append(nm)
            continue
        break
    k_lin = len(before) - len(tail) - 1
    can_merge = bool(tail) and k_lin >= 0 and isinstance(before[k_lin][1], nn.Linear) \
        and before[k_lin][1].out_features == out.in_features
    if merge is True and not can_merge:
        raise ValueError("EEWrapper: merge=True but the last two layers are not Linear → activation → Linear "
                         f"in one nn.Sequential (output layer {name!r})")
    do_merge = can_merge and merge is not False
    dev, dt = out.weight.device, out.weight.dtype
    if do_merge:
        first_name, first = before[k_lin]
        in_features, m_H = first.in_features, (first.out_features if width is None else width)
    else:
        in_features = out.in_features
        if width is None:
            if n is None:
                raise ValueError("EEWrapper: the last two layers are not fully connected, so an EEHead is added on "
                                 f"the {in_features} features entering {name!r}; its width m_H = ceil(2n/m_(H-1)) "
                                 "needs n (the number of training samples) — pass n= or width=")
            m_H = max(1, math.ceil(2 * n / (in_features + 1)))
        else:
            m_H = width
    if not isinstance(m_H, int) or isinstance(m_H, bool) or m_H < 1:
        raise ValueError(f"EEWrapper: width must be a positive int, got {m_H!r}")
    with seeded(seed):
        head = EEHead(in_features, out.out_features, m_H, gate_zeta=gate_zeta, device=dev, dtype=dt)
    replaced = [name]
    if do_merge:
        drop = {first_name, *tail}
        kept = [(nm, m) for nm, m in container.named_children() if nm not in drop]
        for nm in list(container._modules):
            del container._modules[nm]
        for nm, m in kept:
            container.add_module(nm, m)
        prefix = next(pn for pn, pm in model.named_modules() if pm is container)
        replaced = [f"{prefix}.{nm}" if prefix else nm for nm in (first_name, *reversed(tail))] + replaced
    parent, attr = _parent(model, name)
    setattr(parent, attr, head)
    info = {"kind": "merged_last_two" if do_merge else "replaced_output", "name": name,
            "in_features": in_features, "out_features": out.out_features, "m_H": m_H,
            "m_H_minus_1": in_features + 1, "replaced": replaced}
    if n is not None and m_H * (in_features + 1) < n:
        warnings.warn(f"EEWrapper: m_H·m_(H−1) = {m_H}·{in_features + 1} = {m_H * (in_features + 1)} < n = {n}: the "
                      "safe-exploration condition (seed 000, Assumption 4) cannot hold", RuntimeWarning, stacklevel=3)
    return info


class EEWrapper(PhasedTrainer):
    """Seed 000, Algorithm 1: exploration with G, one perturbation at τ, exploitation of θ_(H−1) with G̃.

    Parameters
    ----------
    model : the base network; modified **in place** by :func:`add_ee_head` (``wrapper.model`` is it).
    optimizer : G, a factory ``params -> torch.optim.Optimizer`` (e.g.
        ``functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)``).
    exploit_optimizer : G̃ (default: G). Any optimizer, L-BFGS included (use closures).
    tau, tau0, total_steps, unit : the switch time: ``tau`` steps (or epochs with ``unit="epoch"``),
        or ``tau0 · total_steps`` (the paper's τ = τ₀T̂). τ beyond the run is an error.
    epsilon : ε > 0 of line 9 (the paper: 1e-3 or 1e-5 for images, 0.01 for the sine wave).
    n, width, output_layer, merge, gate_zeta : see :func:`add_ee_head` (``gate_zeta`` = ζ′ of σ̄).
    seed : the perturbation δ is drawn from ``torch.Generator().manual_seed(seed)``; the new head's
        initialisation and ``fit``'s minibatch order use independent streams derived from it
        (:func:`derived_seed`). The global RNG is neither used nor disturbed.
    freeze_norm : in exploitation, batch-norm layers run in eval mode (frozen running statistics), so
        z(x) is a fixed function of x and exploitation is the convex problem of the theory.

    After the switch ``phase == "exploitation"``; every parameter except ``head.weight`` has
    ``requires_grad=False`` and ``optimizer`` is G̃ on ``[head.weight]``.
    """

    phase_names = ("exploration", "exploitation")
    kind = "EEWrapper"

    def __init__(self, model: nn.Module, optimizer, exploit_optimizer=None, *, tau: int | None = None,
                 tau0: float | None = None, total_steps: int | None = None, unit: str = "step",
                 epsilon: float = 1e-3, n: int | None = None, width: int | None = None,
                 output_layer: str | None = None, merge: bool | None = None, gate_zeta: float = 1.0,
                 seed: int = 0, freeze_norm: bool = True, on_switch=None):
        super().__init__(model, optimizer, exploit_optimizer, tau=tau, tau0=tau0, total_steps=total_steps,
                         unit=unit, seed=seed, freeze_norm=freeze_norm, on_switch=on_switch)
        self.epsilon = check_positive(epsilon, "epsilon (ε)", "EEWrapper")
        check_positive(gate_zeta, "gate_zeta (ζ′)", "EEWrapper")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"EEWrapper: n must be a positive int, got {n!r}")
        self.modification = add_ee_head(model, n=n, width=width, output_layer=output_layer, merge=merge,
                                        gate_zeta=gate_zeta, seed=derived_seed(seed, 1))
        self.head_name = self.modification["name"]
        self.head: EEHead = model.get_submodule(self.head_name)
        if not self.head.weight.requires_grad:
            raise ValueError("EEWrapper: the EEHead weight θ_(H−1) is frozen (requires_grad=False); "
                             "exploitation would have nothing to train")
        self.perturbation: dict = {}
        self._build_first_optimizer()

    # --- the switch ------------------------------------------------------------------------------
    def _second_params(self):
        return [self.head.weight]

    def _cache_module(self):
        return self.head

    def _on_switch(self, *, perturb: bool) -> None:
        if perturb:
            if self.perturbation:
                raise RuntimeError("EEWrapper: the perturbation has already been applied")
            self.perturbation = self.perturb()
        self.freeze_gate()

    @torch.no_grad()
    def perturb(self) -> dict:
        """Algorithm 1, line 9: θ ← θ + ε·δ, δ ~ N(0, I_d) over every trainable parameter, drawn from
        a generator seeded with ``seed`` (in ``named_parameters`` order; CPU draws, so the same δ on
        any device). Called once by the switch; returns ε, d and ‖εδ‖."""
        g = torch.Generator().manual_seed(self.seed)
        sq, d = 0.0, 0
        for _, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            delta = torch.randn(p.shape, generator=g, dtype=torch.float64)
            step = (self.epsilon * delta).to(device=p.device, dtype=p.dtype)
            p.add_(step)
            sq += float(step.double().pow(2).sum())
            d += p.numel()
        return {"epsilon": self.epsilon, "d": d, "norm": math.sqrt(sq), "seed": self.seed, "step": self.t}

    def freeze_gate(self) -> None:
        """Algorithm 1, line 10: R ← θ^τ_(H−1), frozen (``EEHead.freeze_gate``)."""
        self.head.freeze_gate()

    def _extra_state(self):
        return {"perturbation": self.perturbation, "epsilon": self.epsilon, "modification": self.modification}

    def _load_extra_state(self, extra):
        if extra.get("modification", self.modification)["m_H"] != self.modification["m_H"]:
            raise ValueError(f"EEWrapper.load_state_dict: checkpoint head width m_H = {extra['modification']['m_H']}, "
                             f"this wrapper {self.modification['m_H']}")
        self.perturbation = dict(extra.get("perturbation", {}))

    def summary(self) -> dict:
        """Phase, step, switch time, model modification and perturbation — JSON-ready."""
        return {"phase": self.phase, "t": self.t, "epoch": self.epoch, "tau": self.tau, "unit": self.unit,
                "epsilon": self.epsilon, "seed": self.seed, "modification": self.modification,
                "perturbation": self.perturbation, "gate_frozen": self.head.gate_frozen}
