"""The two-phase recipe — seeds 002/003 (Kawaguchi & Sun), Algorithm 1.

    lines 2–4  first phase: the base algorithm on all parameters, t = 0 … τ−1
    line 5     w_(1:H) ← w_(1:H) + δ, δ_h ~ N(0, σ_h² I) on all but the last layer (δ = δ₀·ε)
    lines 6–8  second phase: the base algorithm with learning rates that keep
               rank K(w^k) ≥ rank K(w^τ), K = J Jᵀ — here either the last layer only
               (η_t = η·[0, …, 0, 1, …, 1], the paper's §7 setting) or lazy training on all layers,
               with periodic rank checks reporting (or undoing) any violation.
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import Callable

import numpy as np
import torch
from torch import nn

from gconv.train._phased import PhasedTrainer, check_positive
from gconv.train.rank import ntk_rank


class RankViolation(RuntimeError):
    """rank K(w^k) < rank K(w^τ) during the second phase (raised with ``on_violation="raise"``)."""


def _find_last_layer(model: nn.Module, last_layer) -> tuple[str, nn.Module]:
    modules = dict(model.named_modules())
    if isinstance(last_layer, nn.Module):
        for nm, m in modules.items():
            if m is last_layer and nm:
                return nm, m
        raise ValueError("TwoPhase: the last_layer module passed is not part of the model")
    if isinstance(last_layer, str):
        if last_layer not in modules or not last_layer:
            raise ValueError(f"TwoPhase: last_layer {last_layer!r} is not a module of the model")
        mod = modules[last_layer]
    elif last_layer is None:
        head = getattr(model, "head", None)
        if isinstance(head, nn.Module) and "head" in modules:
            last_layer, mod = "head", head
        else:
            lin = [(nm, m) for nm, m in modules.items() if isinstance(m, nn.Linear)]
            if not lin:
                raise ValueError(f"TwoPhase: {type(model).__name__} has no usable last layer (no nn.Linear); pass "
                                 "last_layer= naming the output layer")
            last_layer, mod = lin[-1]
    else:
        raise TypeError(f"TwoPhase: last_layer must be a module name, a module or None, got {type(last_layer).__name__}")
    if not any(p.requires_grad for p in mod.parameters()):
        raise ValueError(f"TwoPhase: the last layer {last_layer!r} ({type(mod).__name__}) has no trainable "
                         "parameter: not a usable last layer for the second phase")
    return last_layer, mod


class TwoPhase(PhasedTrainer):
    """Seed 003, Algorithm 1, around any model and base optimizer.

    Parameters
    ----------
    model : the network (its output layer is the "last layer"; see ``last_layer``).
    optimizer : the base algorithm, a factory ``params -> torch.optim.Optimizer``.
    phase2_optimizer : factory for the second phase (default: the same factory, on the phase-2
        parameters — the paper keeps every hyper-parameter).
    tau, tau0, total_steps, unit : the switch time, as in :class:`EEWrapper` (paper: τ₀ = 0.6).
    delta0 : δ₀ > 0; every perturbed layer gets σ_h = δ₀ (δ = δ₀·ε, ε ~ N(0, I); paper: 0.001).
    sigma : optional ``{parameter-name prefix: σ_h}`` overriding δ₀ for some layers.
    mode : ``"last_layer"`` (train only the last layer's parameters — rank K cannot drop, since the
        last-layer block of K is fixed) or ``"lazy"`` (all layers, with the second-phase optimizer;
        give it a small learning rate).
    last_layer : module name / module of the output layer (default: ``model.head`` for zoo models,
        else the last ``nn.Linear``); its parameters are neither perturbed nor frozen.
    data : the samples for the rank checks (any :func:`gconv.data.as_data_source` input; a small
        subset is fine — K is (n·m_y)²).
    check_every : second-phase steps between rank checks; ``"auto"`` = a tenth of the second phase
        (when ``total_steps`` is known; else 50); 0 or None = only the reference check at τ.
    rank_check : ``fn(model, data, params) -> int`` giving rank K(w) over the parameters ``params``
        (names of all originally trainable parameters); default :func:`gconv.train.ntk_rank`
        (gconv.jacobian.ntk_gram + gconv.linalg.matrix_rank). ``False`` disables checks.
    on_violation : ``"warn"`` (record and warn), ``"raise"`` (:class:`RankViolation`) or ``"revert"``
        (restore the last checked state, halve the learning rates, record) — the last is the
        "learning rates modified to keep the rank" of line 8.
    """

    phase_names = ("phase1", "phase2")
    kind = "TwoPhase"

    def __init__(self, model: nn.Module, optimizer, phase2_optimizer=None, *, tau: int | None = None,
                 tau0: float | None = None, total_steps: int | None = None, unit: str = "step",
                 delta0: float = 1e-3, sigma: dict | None = None, mode: str = "last_layer", last_layer=None,
                 data=None, check_every="auto", rank_check: Callable | bool | None = None,
                 on_violation: str = "warn", seed: int = 0, freeze_norm: bool = True, on_switch=None):
        super().__init__(model, optimizer, phase2_optimizer, tau=tau, tau0=tau0, total_steps=total_steps,
                         unit=unit, seed=seed, freeze_norm=freeze_norm, on_switch=on_switch)
        self.delta0 = check_positive(delta0, "delta0 (δ₀)", "TwoPhase")
        self.sigma = {}
        for k, v in (sigma or {}).items():
            self.sigma[str(k)] = check_positive(v, f"sigma[{k!r}]", "TwoPhase")
        if mode not in ("last_layer", "lazy"):
            raise ValueError(f"TwoPhase: mode must be 'last_layer' or 'lazy', got {mode!r}")
        if on_violation not in ("warn", "raise", "revert"):
            raise ValueError(f"TwoPhase: on_violation must be 'warn', 'raise' or 'revert', got {on_violation!r}")
        self.mode, self.on_violation = mode, on_violation
        self.last_layer_name, self.last_layer = _find_last_layer(model, last_layer)
        names = dict(model.named_parameters())
        self._last_ids = {id(p) for p in self.last_layer.parameters()}
        self._last_trainable = [p for p in self.last_layer.parameters() if p.requires_grad]
        self.param_names = [nm for nm, p in names.items() if p.requires_grad]   # w: every trainable parameter
        for k in self.sigma:
            if not any(nm == k or nm.startswith(k + ".") for nm in self.param_names):
                raise ValueError(f"TwoPhase: sigma key {k!r} matches no trainable parameter")
        if rank_check is False:
            self.rank_check = None
        elif rank_check is None or rank_check is True:
            self.rank_check = ntk_rank
        elif callable(rank_check):
            self.rank_check = rank_check
        else:
            raise TypeError(f"TwoPhase: rank_check must be a callable, None or False, got {type(rank_check).__name__}")
        if check_every == "auto":
            check_every = (max(1, (self.total_steps - self.tau) // 10) if (self.total_steps and unit == "step")
                           else 50)
        if check_every is not None and (isinstance(check_every, bool) or not isinstance(check_every, int)
                                        or check_every < 0):
            raise ValueError(f"TwoPhase: check_every must be a non-negative int, 'auto' or None, got {check_every!r}")
        self.check_every = check_every or 0
        self.check_data = data
        if self.rank_check is not None and data is None:
            raise ValueError("TwoPhase: the rank checks need data= (samples for K = J Jᵀ); pass data= or "
                             "rank_check=False")
        self.reference_rank: int | None = None
        self.rank_history: list[dict] = []
        self.violations: list[dict] = []
        self.perturbation: dict = {}
        self._snapshot = None
        self._build_first_optimizer()

    def _second_params(self):
        if self.mode == "last_layer":
            return list(self._last_trainable)
        names = dict(self.model.named_parameters())
        return [names[nm] for nm in self.param_names]

    def _freeze_norm_in_second(self):
        return self.mode == "last_layer"

    def _cache_module(self):
        return self.last_layer if self.mode == "last_layer" else None

    def _sigma_of(self, name: str) -> float:
        best, val = -1, self.delta0
        for k, v in self.sigma.items():
            if (name == k or name.startswith(k + ".")) and len(k) > best:
                best, val = len(k), v
        return val

    @torch.no_grad()
    def perturb(self) -> dict:
        """Line 5: w_h ← w_h + δ_h, δ_h ~ N(0, σ_h² I), for every trainable parameter outside the last
        layer, from a generator seeded with ``seed`` (CPU draws in float64, ``named_parameters`` order)."""
        g = torch.Generator().manual_seed(self.seed)
        sq, d, layers = 0.0, 0, {}
        for nm, p in self.model.named_parameters():
            if nm not in self.param_names or id(p) in self._last_ids:
                continue
            s = self._sigma_of(nm)
            step = (s * torch.randn(p.shape, generator=g, dtype=torch.float64)).to(device=p.device, dtype=p.dtype)
            p.add_(step)
            sq += float(step.double().pow(2).sum())
            d += p.numel()
            layers[nm] = s
        if d == 0:
            raise ValueError("TwoPhase: nothing to perturb — every trainable parameter is in the last layer")
        return {"delta0": self.delta0, "d": d, "norm": math.sqrt(sq), "seed": self.seed, "step": self.t,
                "sigma": layers}

    def _on_switch(self, *, perturb: bool) -> None:
        if perturb:
            if self.perturbation:
                raise RuntimeError("TwoPhase: the perturbation has already been applied")
            self.perturbation = self.perturb()

    def _enter_second(self, *, perturb: bool) -> None:
        super()._enter_second(perturb=perturb)
        if perturb and self.rank_check is not None:
            r = self._rank()
            self.reference_rank = r
            self.rank_history.append({"step": self.t, "rank": r, "reference": True})
            self._take_snapshot()

    # --- rank checks -----------------------------------------------------------------------------
    def _rank(self) -> int:
        was = self.model.training
        self.model.eval()
        try:
            r = self.rank_check(self.model, self.check_data, list(self.param_names))
        finally:
            self.model.train(was)
        if isinstance(r, (bool, np.bool_)) or not isinstance(r, (int, np.integer)):
            r = getattr(r, "rank", r)
        return int(r)

    def _take_snapshot(self):
        if self.on_violation == "revert":
            self._snapshot = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict()))

    def check_rank(self) -> dict:
        """Compute rank K(w) now, compare with rank K(w^τ), record (and handle) a violation."""
        if not self.switched or self.rank_check is None:
            raise RuntimeError("TwoPhase.check_rank: only in the second phase with a rank check configured")
        r = self._rank()
        rec = {"step": self.t, "rank": r, "reference": False, "violation": r < self.reference_rank}
        self.rank_history.append(rec)
        if not rec["violation"]:
            self._take_snapshot()
            return rec
        v = {"step": self.t, "rank": r, "reference_rank": self.reference_rank}
        msg = (f"TwoPhase: rank K(w^{self.t}) = {r} < rank K(w^τ) = {self.reference_rank} "
               f"(seed 003, Algorithm 1 line 8: the rank-preserving condition is violated)")
        if self.on_violation == "raise":
            self.violations.append(v)
            raise RankViolation(msg)
        if self.on_violation == "revert" and self._snapshot is not None:
            self.model.load_state_dict(self._snapshot[0])
            self.optimizer.load_state_dict(self._snapshot[1])
            for grp in self.optimizer.param_groups:
                grp["lr"] = grp["lr"] * 0.5
            v["action"] = "reverted to the last checked state; learning rates halved"
            v["lr"] = [grp["lr"] for grp in self.optimizer.param_groups]
        else:
            v["action"] = "reported"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        self.violations.append(v)
        return rec

    def _after_step(self):
        if (self.switched and self.rank_check is not None and self.check_every
                and (self.t - self.switch_info.get("step", self.tau)) % self.check_every == 0):
            self.check_rank()

    def _extra_state(self):
        return {"perturbation": self.perturbation, "reference_rank": self.reference_rank,
                "rank_history": self.rank_history, "violations": self.violations, "mode": self.mode}

    def _load_extra_state(self, extra):
        if extra.get("mode", self.mode) != self.mode:
            raise ValueError(f"TwoPhase.load_state_dict: checkpoint mode {extra['mode']!r}, this wrapper {self.mode!r}")
        self.perturbation = dict(extra.get("perturbation", {}))
        self.reference_rank = extra.get("reference_rank")
        self.rank_history = list(extra.get("rank_history", []))
        self.violations = list(extra.get("violations", []))

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if self.switched:
            self._take_snapshot()

    def summary(self) -> dict:
        return {"phase": self.phase, "t": self.t, "tau": self.tau, "unit": self.unit, "mode": self.mode,
                "delta0": self.delta0, "seed": self.seed, "last_layer": self.last_layer_name,
                "perturbation": self.perturbation, "reference_rank": self.reference_rank,
                "rank_history": self.rank_history, "violations": self.violations}
