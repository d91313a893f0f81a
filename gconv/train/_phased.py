"""Shared machinery of the two wrappers: two phases switched once at τ.

Both :class:`~gconv.train.EEWrapper` (seed 000, Alg. 1) and :class:`~gconv.train.TwoPhase`
(seed 003, Alg. 1) run a first phase with an optimizer built by a factory G, perturb the
parameters once at τ, and run a second phase on a subset of the parameters with a factory G̃.
This module holds what they share: optimizer factories, τ resolution, the step / epoch hooks,
checkpoints, and the :meth:`PhasedTrainer.fit` helper.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from gconv._utils import progress as _progress

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]

# Normalisation layers whose running statistics / batch coupling the second phase freezes.
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def as_optimizer_factory(opt, what: str) -> OptimizerFactory:
    """Accept ``params -> Optimizer`` callables (``functools.partial(torch.optim.SGD, lr=0.1)``, a
    lambda) or an Optimizer class with usable defaults (``torch.optim.LBFGS``)."""
    if isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"{what}: pass an optimizer factory (params -> optimizer), e.g. "
                        "functools.partial(torch.optim.SGD, lr=0.1), not an optimizer instance: the wrapper "
                        "builds each phase's optimizer on that phase's parameters")
    if not callable(opt):
        raise TypeError(f"{what}: expected a callable params -> torch.optim.Optimizer, got {type(opt).__name__}")
    return opt


def _build_optimizer(factory: OptimizerFactory, params: list[nn.Parameter], what: str) -> torch.optim.Optimizer:
    try:
        opt = factory(params)
    except TypeError as exc:
        raise TypeError(f"{what}: the optimizer factory failed on the parameter list ({exc}); "
                        "give required arguments, e.g. functools.partial(torch.optim.SGD, lr=0.1)") from exc
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"{what}: the optimizer factory returned {type(opt).__name__}, not a torch.optim.Optimizer")
    return opt


def needs_closure(opt: torch.optim.Optimizer) -> bool:
    return isinstance(opt, torch.optim.LBFGS)


def resolve_tau(tau, tau0, total_steps, unit: str, who: str) -> tuple[int, int | None]:
    """τ in steps (or epochs), from ``tau`` or ``tau0 × total_steps``; checks it lies inside the run."""
    if unit not in ("step", "epoch"):
        raise ValueError(f"{who}: unit must be 'step' or 'epoch', got {unit!r}")
    if total_steps is not None:
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"{who}: total_steps (the run length T in {unit}s) must be a positive int, "
                             f"got {total_steps!r}")
    if (tau is None) == (tau0 is None):
        raise ValueError(f"{who}: give exactly one of tau (the switch time in {unit}s) or tau0 (a fraction of the "
                         f"run, with total_steps)")
    if tau0 is not None:
        if not (isinstance(tau0, (int, float)) and 0 < tau0 < 1):
            raise ValueError(f"{who}: tau0 must be a fraction in (0, 1), got {tau0!r}")
        if total_steps is None:
            raise ValueError(f"{who}: tau0 = {tau0} needs total_steps (the run length T) to give tau = tau0·T")
        tau = max(1, int(round(tau0 * total_steps)))
    if isinstance(tau, bool) or not isinstance(tau, int) or tau < 1:
        raise ValueError(f"{who}: tau must be a positive int number of {unit}s (the first phase runs "
                         f"t = 0 … tau−1), got {tau!r}")
    if total_steps is not None and tau > total_steps:
        raise ValueError(f"{who}: tau = {tau} {unit}s is beyond the run (total_steps = {total_steps})")
    return tau, total_steps


def derived_seed(seed: int, *stream: int) -> int:
    """A well-mixed seed for an independent random stream (head init, minibatch order) derived from
    the user's ``seed``, so these streams are not correlated with the perturbation drawn from
    ``torch.Generator().manual_seed(seed)``."""
    import numpy as np
    return int(np.random.SeedSequence([int(seed) % 2**63, *stream]).generate_state(1, np.uint64)[0] % 2**63)


def check_positive(value, name: str, who: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{who}: {name} must be a positive finite number, got {value!r}")
    return float(value)


def training_error(output: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction misclassified. One output column: label 1 iff output > 0 (logits; targets in {0, 1}
    or {−1, +1}); several: argmax against integer labels or one-hot / probability targets."""
    out = output.detach()
    tgt = target.detach()
    if out.dim() == 1:
        out = out.unsqueeze(1)
    if out.shape[1] == 1:
        t = tgt.reshape(-1).to(out.dtype)
        lab = (t > 0).long() if bool((t < 0).any()) else (t > 0.5).long()
        return float(((out[:, 0] > 0).long() != lab).float().mean())
    pred = out.argmax(1)
    lab = tgt.argmax(1) if (tgt.dim() == 2 and tgt.shape[1] == out.shape[1]) else tgt.reshape(-1).long()
    return float((pred != lab).float().mean())


@dataclass
class FitResult:
    """What :meth:`PhasedTrainer.fit` returns: per-step history and the final state."""
    history: list[dict] = field(default_factory=list)
    final: dict = field(default_factory=dict)
    switched_at: int | None = None
    seconds: float = 0.0
    feature_cache: bool = False

    def series(self, key: str) -> tuple[list[int], list[Any]]:
        """(steps, values) of ``key`` over the history records that have it."""
        pts = [(h["step"], h[key]) for h in self.history if key in h]
        return [p[0] for p in pts], [p[1] for p in pts]


class PhasedTrainer:
    """Base class: two phases, one switch at τ. Subclasses define the phase names, the parameters of
    each phase, and what happens at the switch (:meth:`_on_switch`)."""

    phase_names: tuple[str, str] = ("phase1", "phase2")
    kind = "PhasedTrainer"

    def __init__(self, model: nn.Module, optimizer, second_optimizer=None, *, tau=None, tau0=None,
                 total_steps=None, unit: str = "step", seed: int = 0, freeze_norm: bool = True,
                 on_switch: Callable[["PhasedTrainer"], None] | None = None):
        who = type(self).__name__
        if not isinstance(model, nn.Module):
            raise TypeError(f"{who}: model must be an nn.Module, got {type(model).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"{who}: seed must be an int, got {seed!r}")
        self.model = model
        self.tau, self.total_steps = resolve_tau(tau, tau0, total_steps, unit, who)
        self.unit, self.seed, self.freeze_norm = unit, seed, bool(freeze_norm)
        self._factory1 = as_optimizer_factory(optimizer, f"{who}: optimizer")
        self._factory2 = (self._factory1 if second_optimizer is None
                          else as_optimizer_factory(second_optimizer, f"{who}: second-phase optimizer"))
        self.on_switch = on_switch
        self.t = 0          # optimizer steps taken
        self.epoch = 0      # epochs completed (on_epoch_end calls)
        self._phase = 0
        self._norm_hooks: list = []
        self._frozen_names: list[str] = []
        self.switch_info: dict = {}

    # --- phases ----------------------------------------------------------------------------------
    @property
    def phase(self) -> str:
        return self.phase_names[self._phase]

    @property
    def switched(self) -> bool:
        return self._phase == 1

    def _first_params(self) -> list[nn.Parameter]:
        ps = [p for p in self.model.parameters() if p.requires_grad]
        if not ps:
            raise ValueError(f"{type(self).__name__}: the model has no trainable parameter")
        return ps

    def _second_params(self) -> list[nn.Parameter]:   # pragma: no cover - abstract
        raise NotImplementedError

    def _build_first_optimizer(self):
        self.optimizer = _build_optimizer(self._factory1, self._first_params(), f"{type(self).__name__}: optimizer")

    def _enter_second(self, *, perturb: bool) -> None:
        """Switch: perturbation (if ``perturb``), subclass hook, freezing, second-phase optimizer."""
        self._on_switch(perturb=perturb)
        keep = {id(p) for p in self._second_params()}
        self._frozen_names = []
        for name, p in self.model.named_parameters():
            if id(p) not in keep and p.requires_grad:
                p.requires_grad_(False)
                self._frozen_names.append(name)
        if self._freeze_norm_in_second() and self.freeze_norm:
            self._install_norm_freeze()
        self.optimizer = _build_optimizer(self._factory2, self._second_params(),
                                          f"{type(self).__name__}: second-phase optimizer")
        self._phase = 1
        self.switch_info.setdefault("step", self.t)
        self.switch_info.setdefault("epoch", self.epoch)
        if perturb and self.on_switch is not None:
            self.on_switch(self)

    def _on_switch(self, *, perturb: bool) -> None:   # pragma: no cover - abstract
        raise NotImplementedError

    def _freeze_norm_in_second(self) -> bool:
        return True

    def _install_norm_freeze(self):
        def pre_hook(module, args):
            if module.training:
                module.train(False)
        for m in self.model.modules():
            if isinstance(m, _NORM_TYPES):
                self._norm_hooks.append(m.register_forward_pre_hook(pre_hook))

    def switch(self) -> None:
        """Switch now (normally done by :meth:`on_step_end` / :meth:`on_epoch_end` at τ)."""
        if self.switched:
            raise RuntimeError(f"{type(self).__name__}: already switched (at step {self.switch_info.get('step')}); "
                               "the switch happens exactly once")
        self._enter_second(perturb=True)

    # --- hooks for the user's own loop -----------------------------------------------------------
    def step(self, closure_or_loss=None):
        """One optimizer step of the current phase, then :meth:`on_step_end`.

        * ``step(closure)`` — ``closure()`` zeroes grads, computes the loss, calls ``backward`` and
          returns the loss (required for L-BFGS); returns what ``optimizer.step`` returns.
        * ``step(loss)`` — a loss tensor: grads are zeroed, ``loss.backward()`` runs, the optimizer steps.
        * ``step()`` — you already called ``backward``; the optimizer steps.

        Re-read ``wrapper.optimizer`` after the switch (it is a new optimizer on the second phase's
        parameters); in hand-written loops the simplest is to always go through ``wrapper.step``.
        """
        opt = self.optimizer
        if isinstance(closure_or_loss, torch.Tensor):
            if needs_closure(opt):
                raise ValueError(f"{type(self).__name__}.step: {type(opt).__name__} re-evaluates the loss; pass a "
                                 "closure (zero_grad, forward, loss, backward, return loss), not a loss tensor")
            opt.zero_grad(set_to_none=True)
            closure_or_loss.backward()
            opt.step()
            out = closure_or_loss.detach()
        elif closure_or_loss is None:
            if needs_closure(opt):
                raise ValueError(f"{type(self).__name__}.step: {type(opt).__name__} needs a closure")
            out = opt.step()
        elif callable(closure_or_loss):
            out = opt.step(closure_or_loss)
        else:
            raise TypeError(f"{type(self).__name__}.step: expected a closure, a loss tensor or nothing, got "
                            f"{type(closure_or_loss).__name__}")
        self.on_step_end()
        return out

    def on_step_end(self) -> bool:
        """Count one step; switch when τ steps are done (``unit="step"``). Returns True at the switch."""
        self.t += 1
        self._after_step()
        if self.unit == "step" and not self.switched and self.t >= self.tau:
            self.switch()
            return True
        return False

    def on_epoch_end(self) -> bool:
        """Count one epoch; switch when τ epochs are done (``unit="epoch"``). Returns True at the switch."""
        self.epoch += 1
        if self.unit == "epoch" and not self.switched and self.epoch >= self.tau:
            self.switch()
            return True
        return False

    def _after_step(self):
        pass

    # --- checkpoints -----------------------------------------------------------------------------
    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, extra: dict) -> None:
        pass

    def state_dict(self) -> dict:
        """Everything needed to resume on either side of the switch: model, optimizer, counters."""
        return {"kind": self.kind, "version": 1, "phase": self.phase, "t": self.t, "epoch": self.epoch,
                "tau": self.tau, "unit": self.unit, "seed": self.seed, "total_steps": self.total_steps,
                "switch_info": copy.deepcopy(self.switch_info),
                "model": copy.deepcopy(self.model.state_dict()),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "extra": copy.deepcopy(self._extra_state())}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` into a wrapper built the same way (same model class, factories
        and configuration); a checkpoint from the second phase switches this wrapper without
        perturbing again (the perturbed parameters and frozen gate come from the checkpoint)."""
        who = type(self).__name__
        if not isinstance(state, dict) or state.get("kind") != self.kind:
            raise ValueError(f"{who}.load_state_dict: not a {self.kind} checkpoint "
                             f"(kind = {state.get('kind') if isinstance(state, dict) else type(state).__name__})")
        for key in ("tau", "unit"):
            if state[key] != getattr(self, key):
                raise ValueError(f"{who}.load_state_dict: checkpoint has {key} = {state[key]!r}, this wrapper "
                                 f"{getattr(self, key)!r}")
        if state["phase"] not in self.phase_names:
            raise ValueError(f"{who}.load_state_dict: unknown phase {state['phase']!r}")
        second = state["phase"] == self.phase_names[1]
        if self.switched and not second:
            raise ValueError(f"{who}.load_state_dict: the checkpoint is from the {self.phase_names[0]} phase but this "
                             "wrapper has already switched; load it into a freshly built wrapper")
        self.switch_info = copy.deepcopy(state.get("switch_info", {}))
        self._load_extra_state(state.get("extra", {}))
        if second and not self.switched:
            self._enter_second(perturb=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.t, self.epoch = int(state["t"]), int(state["epoch"])

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`state_dict` with ``torch.save`` (atomically: a temporary file, then rename)."""
        tmp = f"{os.fspath(path)}.tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load(self, path: str | os.PathLike) -> None:
        """Resume from a file written by :meth:`save`."""
        state = torch.load(path, map_location=lambda s, loc: s, weights_only=False)
        self.load_state_dict(state)

    # --- fit -------------------------------------------------------------------------------------
    def _cache_module(self) -> nn.Module | None:
        """A module whose *input* is fixed during the second phase (its features can be cached)."""
        return None

    def fit(self, data, loss_fn: Callable, *, steps: int | None = None, epochs: int | None = None,
            batch_size: int | None = None, shuffle: bool = True, transform: Callable | None = None,
            metrics: dict | bool | None = None, eval_every: int | str | None = "auto",
            cache_features: bool | str = "auto", checkpoint: str | None = None, checkpoint_every: int | None = None,
            resume: bool = False, show_progress: bool = True,
            callback: Callable[["PhasedTrainer", dict], Any] | None = None) -> FitResult:
        """Train on ``data`` (anything :func:`gconv.data.as_data_source` accepts, with targets).

        ``steps`` / ``epochs`` is the *total* length of the run (absolute: a resumed wrapper continues
        from ``self.t``); default ``total_steps``. ``batch_size=None`` is full-batch (gradient descent);
        minibatch order comes from a permutation seeded by (``seed``, epoch), so a resumed run sees
        the same batches. Every step goes through a closure, so L-BFGS works in either phase.
        ``transform(x)`` is applied to each training batch (data augmentation; it turns the feature
        cache off). ``fit`` does not change the model's train / eval mode.

        ``metrics``: ``{name: fn(output, Y) -> float}`` evaluated on the whole training set, in eval
        mode (so evaluation never touches batch-norm statistics), at the start, the switch, the end
        and every ``eval_every`` steps (``"auto"``: about 50 times per run when n ≤ 10,000, else
        only at those three points; None: only there). ``"error"`` (:func:`training_error`) is
        added for classification targets; ``metrics=False`` turns evaluation off. The loss values
        in the history are the mini-batch losses of the steps (before each update).

        ``cache_features``: in the second phase the input of the trained layer is fixed, so it is
        computed once for all samples and only the trained layer runs per step. ``"auto"`` caches
        when the model output is checked to be that layer's output on the data, no dropout is
        active, batch norms are frozen (or absent) and there is no ``transform``; ``False`` always
        runs the whole model; ``True`` also warns when the check fails.

        ``checkpoint``: a path written every ``checkpoint_every`` steps and at the end; with
        ``resume`` an existing file there is loaded first.
        """
        from gconv.data.source import as_data_source
        who = f"{type(self).__name__}.fit"
        if not callable(loss_fn):
            raise TypeError(f"{who}: loss_fn must be callable (output, target) -> loss")
        if transform is not None and not callable(transform):
            raise TypeError(f"{who}: transform must be callable x -> x")
        src = as_data_source(data)
        if not src.has_targets:
            raise ValueError(f"{who}: the data have no targets")
        X, Y = src.tensors()
        n = X.shape[0]
        bs = n if batch_size is None else int(batch_size)
        if bs < 1:
            raise ValueError(f"{who}: batch_size must be >= 1, got {batch_size}")
        bs = min(bs, n)
        per_epoch = math.ceil(n / bs)
        if checkpoint is not None and resume and os.path.exists(checkpoint):
            self.load(checkpoint)
        if self.unit == "epoch":
            if steps is not None:
                raise ValueError(f"{who}: this wrapper counts tau in epochs; give epochs=, not steps=")
            total_epochs = epochs if epochs is not None else self.total_steps
            if total_epochs is None:
                raise ValueError(f"{who}: give epochs= (or total_steps at construction)")
            total = total_epochs * per_epoch
            if self.tau > total_epochs and (self.total_steps is None or self.total_steps < self.tau):
                raise ValueError(f"{who}: tau = {self.tau} epochs is beyond the run ({total_epochs} epochs); for a "
                                 "partial run, give total_steps (the whole run) at construction")
        else:
            if epochs is not None and steps is not None:
                raise ValueError(f"{who}: give steps= or epochs=, not both")
            total = steps if steps is not None else (epochs * per_epoch if epochs is not None else self.total_steps)
            if total is None:
                raise ValueError(f"{who}: give steps= or epochs= (or total_steps at construction)")
            if self.tau > total and (self.total_steps is None or self.total_steps < self.tau):
                raise ValueError(f"{who}: tau = {self.tau} steps is beyond the run ({total} steps); for a partial "
                                 "run, give total_steps (the whole run) at construction")
        if metrics is False:
            metrics = {}
        else:
            metrics = dict(metrics or {})
            if "error" not in metrics and _is_classification(Y):
                metrics["error"] = training_error
        if eval_every == "auto":
            eval_every = max(1, total // 50) if n <= 10_000 else None
        elif eval_every is not None and (isinstance(eval_every, bool) or not isinstance(eval_every, int)
                                         or eval_every < 1):
            raise ValueError(f"{who}: eval_every must be a positive int, 'auto' or None, got {eval_every!r}")
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        result = FitResult()
        cache = {"z": None, "module": None}
        t_start = time.perf_counter()

        def forward(idx, train=False):
            if cache["z"] is not None:
                return cache["module"](cache["z"][idx])
            xb = X[idx].to(device)
            if train and transform is not None:
                xb = transform(xb)
            return self.model(xb)

        def evaluate(with_loss=False) -> dict:
            if not metrics and not with_loss:
                return {}
            with torch.no_grad(), _eval_mode(self.model):
                out = torch.cat([forward(torch.arange(s, min(n, s + bs))) for s in range(0, n, bs)])
                yy = Y.to(out.device)
                rec = {k: float(fn(out, yy)) for k, fn in metrics.items()}
                if with_loss:
                    rec = {"loss": float(loss_fn(out, yy)), **rec}
            return rec

        def maybe_cache():
            if cache_features is False or not self.switched or transform is not None:
                return
            mod = self._cache_module()
            if mod is None:
                return
            if any(m.training for m in self.model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)):
                return
            if not self._norm_hooks and any(isinstance(m, _NORM_TYPES) and m.training for m in self.model.modules()):
                return
            z = _capture_inputs(self.model, mod, X, bs, device, warn=cache_features is True)
            if z is not None:
                cache["z"], cache["module"] = z, mod
                result.feature_cache = True

        bar = _progress(total=max(0, total - self.t), desc=f"{type(self).__name__}", enabled=show_progress)
        try:
            if self.switched:
                maybe_cache()
            result.history.append({"step": self.t, "phase": self.phase, **evaluate()})
            while self.t < total:
                ep, k = divmod(self.t, per_epoch)
                if shuffle and bs < n:
                    perm = torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(self.seed, 2, ep)))
                else:
                    perm = torch.arange(n)
                idx = perm[k * bs:(k + 1) * bs]
                yb = Y[idx].to(device)
                opt = self.optimizer

                def closure():
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(forward(idx, train=True), yb)
                    loss.backward()
                    return loss
                loss = float(opt.step(closure).detach())
                phase_before = self.phase
                switched = self.on_step_end()
                if k == per_epoch - 1:
                    switched = self.on_epoch_end() or switched
                rec = {"step": self.t, "phase": phase_before, "loss": loss}
                if switched:
                    result.switched_at = self.t
                    rec.update(evaluate())
                    maybe_cache()
                    rec["after_switch"] = {"phase": self.phase, **evaluate()}
                elif self.t >= total or (eval_every and self.t % eval_every == 0):
                    rec.update(evaluate())
                result.history.append(rec)
                bar.update(1)
                bar.set_postfix_str(f"{self.phase} loss {loss:.3g}")
                if callback is not None:
                    callback(self, rec)
                if checkpoint is not None and checkpoint_every and self.t % checkpoint_every == 0:
                    self.save(checkpoint)
        finally:
            bar.close()
        if checkpoint is not None:
            self.save(checkpoint)
        result.final = {"step": self.t, "phase": self.phase, **evaluate(with_loss=True)}
        result.seconds = time.perf_counter() - t_start
        if result.switched_at is None and self.switched:
            result.switched_at = self.switch_info.get("step")
        return result


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, t in modes.items():
            m.training = t


def _is_classification(Y: torch.Tensor) -> bool:
    if not Y.is_floating_point():
        return Y.dim() == 1
    if Y.dim() == 2 and Y.shape[1] == 1:
        return bool(((Y == 0) | (Y == 1)).all())
    return False


def _capture_inputs(model: nn.Module, module: nn.Module, X: torch.Tensor, bs: int, device,
                    warn: bool) -> torch.Tensor | None:
    """Inputs of ``module`` for every sample, provided the model output *is* the module's output."""
    store: dict = {}

    def hook(mod, args, out):
        store["z"], store["out"] = args[0].detach(), out.detach()
    h = module.register_forward_hook(hook)
    zs = []
    try:
        with torch.no_grad():
            for s in range(0, X.shape[0], bs):
                store.clear()
                out = model(X[s:s + bs].to(device))
                if "z" not in store or not torch.is_tensor(out) or out.shape != store["out"].shape \
                        or not torch.equal(out, store["out"]):
                    if warn:
                        warnings.warn("feature cache disabled: the model output is not the output of the "
                                      f"trained {type(module).__name__}", RuntimeWarning, stacklevel=3)
                    return None
                zs.append(store["z"])
    finally:
        h.remove()
    return torch.cat(zs)
