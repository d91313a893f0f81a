"""Tracking the alignment condition and the gradient representation during training (seed 000 §2.2).

* :class:`QTracker` counts Q_T = Σ_{t=0..T} 1{vec(Y_ℓ) ∉ Col(J(θ^t))} (eq. 2.5): call it once per
  step from any training loop (it is a plain callable), or hand it to a framework as a callback.
* :func:`representation_change` computes ‖M(θ^T) − M(θ^0)‖_F² with M = J Jᵀ (Table 1), streamed over
  the upper triangle of blocks: nothing of size (n·m_y)² is stored.
"""
from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from gconv.jacobian._losses import as_loss
from gconv.jacobian.alignment import AlignmentResult, alignment_target, check_alignment, data_targets
from gconv.jacobian.operator import Jacobian


@dataclass
class QTrackerSummary:
    Q: int                    # Q_T: evaluated steps where Y_ℓ ∉ Col(J) (NOT_ALIGNED; + INCONCLUSIVE if counted)
    T: int                    # last step seen
    evaluated: int            # steps at which the condition was checked
    aligned: int
    not_aligned: int
    inconclusive: int
    count_inconclusive: bool
    every: int
    history: list = field(default_factory=list)   # per evaluated step: step, verdict, relative residual, ...


class QTracker:
    """Counts Q_T (seed 000, eq. 2.5) along a training run.

    Usage with any loop::

        tracker = QTracker(model, (X, Y), "cross_entropy")
        tracker()                      # t = 0, before training
        for t in range(1, T + 1):
            train_step(...)
            tracker()                  # or tracker(step=t); extra positional/keyword arguments are ignored
        tracker.Q, tracker.summary()

    ``every``: check only at steps t ≡ 0 (mod every) — Q then counts failures among the checked
    steps (``evaluated`` says how many). ``count_inconclusive``: whether INCONCLUSIVE verdicts count as
    failures (default False: they are reported separately in ``.inconclusive``). ``warm_start``:
    start each solve at the previous solution (θ moves little between steps). Other keyword arguments
    go to :func:`gconv.jacobian.check_alignment` (method, tol, maxiter, precondition, ...) and to
    :class:`Jacobian` (params, chunk_size, memory_budget, coupling, forward_ad).

    ``state_dict()`` / ``load_state_dict()`` make a run resumable.
    """

    _J_KEYS = ("params", "chunk_size", "memory_budget", "coupling", "forward_ad")

    def __init__(self, model: nn.Module, data, loss, *, every: int = 1, count_inconclusive: bool = False,
                 warm_start: bool = True, progress=False, **kwargs):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"QTracker: every must be a positive int, got {every!r}")
        self.model, self.data, self.loss = model, data, as_loss(loss)
        self.every, self.count_inconclusive, self.warm_start, self.progress = every, count_inconclusive, \
            warm_start, progress
        self.jkw = {k: kwargs.pop(k) for k in self._J_KEYS if k in kwargs}
        self.ckw = kwargs
        self.t = -1
        self.Q = self.evaluated = self.aligned = self.not_aligned = self.inconclusive = 0
        self.history: list[dict] = []
        self.last: AlignmentResult | None = None
        self._J = None
        self._ptrs = None
        self._y = None
        self._x = None

    def _jacobian(self) -> Jacobian:
        # rebuild when parameters were re-allocated (e.g. .to()) or a module switched train/eval mode
        ptrs = (tuple(p.data_ptr() for p in self.model.parameters()), tuple(m.training for m in self.model.modules()))
        if self._J is None or ptrs != self._ptrs:
            self._J = Jacobian(self.model, self.data, **self.jkw)
            self._ptrs = ptrs
            self._y = alignment_target(self._J, self.loss, data_targets(self._J))
        return self._J

    def __call__(self, *args, step: int | None = None, **kwargs) -> AlignmentResult | None:
        """Record step ``step`` (default: the previous step + 1); check the condition if it is due."""
        self.t = self.t + 1 if step is None else int(step)
        if self.t % self.every:
            return None
        J = self._jacobian()
        x0 = self._x if (self.warm_start and self._x is not None) else None
        res = check_alignment(J, self._y, x0=x0, progress=self.progress, loss_name=self.loss.kind,
                              target_transform=self.loss.target_transform, **self.ckw)
        self._x = getattr(res, "solution", None)
        self.evaluated += 1
        if res.verdict == "ALIGNED":
            self.aligned += 1
        elif res.verdict == "NOT_ALIGNED":
            self.not_aligned += 1
            self.Q += 1
        else:
            self.inconclusive += 1
            if self.count_inconclusive:
                self.Q += 1
        self.history.append(dict(step=self.t, verdict=res.verdict, relative_residual=res.relative_residual,
                                 iterations=res.iterations, method=res.method, seconds=res.seconds, Q=self.Q))
        self.last = res
        return res

    step = __call__

    @property
    def T(self) -> int:
        return self.t

    def summary(self) -> QTrackerSummary:
        return QTrackerSummary(Q=self.Q, T=self.t, evaluated=self.evaluated, aligned=self.aligned,
                               not_aligned=self.not_aligned, inconclusive=self.inconclusive,
                               count_inconclusive=self.count_inconclusive, every=self.every,
                               history=list(self.history))

    def state_dict(self) -> dict:
        return dict(t=self.t, Q=self.Q, evaluated=self.evaluated, aligned=self.aligned, not_aligned=self.not_aligned,
                    inconclusive=self.inconclusive, history=copy.deepcopy(self.history),
                    x=None if self._x is None else self._x.detach().cpu())

    def load_state_dict(self, state: dict) -> None:
        for k in ("t", "Q", "evaluated", "aligned", "not_aligned", "inconclusive"):
            setattr(self, k, int(state[k]))
        self.history = list(state["history"])
        self._x = state.get("x")


@dataclass
class RepresentationChange:
    value: float                 # ‖M(θ^T) − M(θ^0)‖_F²
    norm_T: float                # ‖M(θ^T)‖_F
    norm_0: float                # ‖M(θ^0)‖_F
    relative: float              # ‖M(θ^T) − M(θ^0)‖_F / ‖M(θ^0)‖_F
    n: int
    m_y: int
    d: int
    method: str
    blocks: int
    seconds: float


def _state(obj, who):
    if isinstance(obj, nn.Module):
        return {k: v.detach() for k, v in obj.state_dict().items()}
    if isinstance(obj, dict):
        return obj
    raise TypeError(f"representation_change: {who} must be an nn.Module or a dict of tensors (a state_dict), got "
                    f"{type(obj).__name__}")


def representation_change(model_or_params_T, params_0, data, *, model: nn.Module | None = None, params=None,
                          method="auto", chunk_size=None, memory_budget=None, coupling="auto", forward_ad="auto",
                          progress=None) -> RepresentationChange:
    """‖M(θ^T) − M(θ^0)‖_F², M(θ) = J(θ) J(θ)ᵀ over ``data`` (seed 000, Table 1), streamed.

    ``model_or_params_T``: the trained model (its current parameters and buffers are θ^T), or a
    state_dict of θ^T together with ``model=``. ``params_0``: a state_dict (or a model copy) of θ^0;
    entries missing from it keep the model's values. ``params`` selects the columns of J (default: all
    trainable). Blocks of both Grams are formed in float64 from the same features (``method`` as for
    :func:`ntk_gram`) and only the upper triangle is visited.
    """
    from gconv.jacobian.ntk import _GramEngine, gram_blocks
    from gconv._utils import progress as _progress
    t0 = time.perf_counter()
    if progress is None:
        progress = sys.stderr.isatty()
    if isinstance(model_or_params_T, nn.Module):
        if model is not None and model is not model_or_params_T:
            raise ValueError("representation_change: pass either a model or model= with a state_dict, not both")
        model, vals_T = model_or_params_T, None
    else:
        if model is None:
            raise ValueError("representation_change: a state_dict for θ^T needs model=")
        vals_T = _state(model_or_params_T, "model_or_params_T")
    vals_0 = _state(params_0, "params_0")
    kw = dict(chunk_size=chunk_size, memory_budget=memory_budget, coupling=coupling, forward_ad=forward_ad)
    JT = Jacobian(model, data, params, param_values=vals_T, **kw)
    J0 = Jacobian(model, data, params, param_values=vals_0, **kw)
    chosen = _GramEngine(JT, method).method if method == "auto" else method
    diff = nT = n0 = 0.0
    nblocks = 0
    bar = _progress(desc="‖M_T − M_0‖", enabled=bool(progress), unit="block")
    for (r0, r1), (c0, c1), (BT, B0) in gram_blocks([JT, J0], chosen, acc_dtype=torch.float64):
        w = 1.0 if r0 == c0 else 2.0
        diff += w * float(((BT - B0) ** 2).sum())
        nT += w * float((BT ** 2).sum())
        n0 += w * float((B0 ** 2).sum())
        nblocks += 1
        bar.update(1)
    bar.close()
    return RepresentationChange(value=diff, norm_T=math.sqrt(nT), norm_0=math.sqrt(n0),
                                relative=math.sqrt(diff) / math.sqrt(n0) if n0 > 0 else math.inf, n=JT.n, m_y=JT.m_y,
                                d=JT.d, method=chosen, blocks=nblocks, seconds=time.perf_counter() - t0)
