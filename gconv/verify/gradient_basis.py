"""Seed 001 (Kawaguchi, Huang, Kaelbling), Theorem 1: the gradient-basis gap L(θ) − inf_α L_θ(α).

L_θ(α) = Σ_i λ_i ℓ(Σ_k α_k ∂_k f(x_i; θ), y_i) is convex in α; at every differentiable critical point
θ the gap is zero (Theorem 1), i.e. θ is as good as every model in its gradient basis.  The check is
:func:`gconv.jacobian.gradient_basis_gap`, which returns a lower bound ``gap`` (from an exhibited α̂)
and an upper bound over the ball ‖α‖ ≤ R (convexity), at relative tolerance ``tol`` of L(θ).

Verdict mapping: ZERO_GAP (−tol·L ≤ gap and gap_upper_bound ≤ tol·L; the upper bound holds over the
ball of radius R, reported) → ``VERIFIED``; GAP_POSITIVE (an exhibited α̂ beats θ by more than tol·L —
θ is not a critical point) or GAP_NEGATIVE (f_X(θ) is not in the tangent span, Assumption 2 fails) →
``NOT_VERIFIED``; INCONCLUSIVE → ``INCONCLUSIVE``.
"""
from __future__ import annotations

import time

import torch

from gconv._utils import environment, to_jsonable
from gconv.jacobian import gradient_basis_gap as _gap
from gconv.verify._common import data_summary, model_on, progress_default
from gconv.verify.features import model_summary
from gconv.verify.report import VerificationReport, Verdict

PAPER = "seed 001 (Kawaguchi, Huang, Kaelbling)"
EQUATION = "Theorem 1: L(theta) = inf_alpha L_theta(alpha)"
STATEMENT = "the gradient-basis gap L(theta) - inf_alpha L_theta(alpha) is zero (within tol)"

_MAP = {"ZERO_GAP": Verdict.VERIFIED, "GAP_POSITIVE": Verdict.NOT_VERIFIED, "GAP_NEGATIVE": Verdict.NOT_VERIFIED}


def gradient_basis_gap(model, data, loss="squared", *, params=None, tol: float | None = None,
                       seed: int | None = None, device=None, memory_budget=None, progress: bool | None = None,
                       **gap_options) -> VerificationReport:
    """Verify seed 001's Theorem 1 conclusion at the model's current θ on ``data`` (with targets).

    ``loss``: "squared" | "cross_entropy" | "binary_cross_entropy" or the nn loss modules;
    ``params``: θ's coordinates k (None: all trainable).  Other options (``radius``, ``maxiter``, ...)
    go to :func:`gconv.jacobian.gradient_basis_gap`.  The margin of a VERIFIED report is
    ``gap_upper_bound / L(θ)`` (≤ tol); of a NOT_VERIFIED one, ``gap / L(θ)``.
    """
    t0 = time.perf_counter()
    progress = progress_default(progress)
    inputs = data_summary(data)
    model = model_on(model, device)
    res = _gap(model, data, loss, params=params, tol=tol, memory_budget=memory_budget, progress=progress,
               **gap_options)
    verdict = _MAP.get(res.verdict, Verdict.INCONCLUSIVE)
    L = res.loss_value
    rel = (lambda v: v / L if L > 0 else v)
    inputs.update(model=model_summary(model), seed=seed, loss=res.loss, dtype=res.dtype,
                  params="all trainable" if params is None else str(params), matrix_shape=[res.n * res.m_y, res.d],
                  m_y=res.m_y, device=str(next(iter(model.parameters()), torch.empty(0)).device))
    if verdict is Verdict.VERIFIED:
        margin, mname = rel(res.gap_upper_bound), f"relative gap upper bound over ||alpha|| <= {res.radius:.3g}"
    elif res.verdict == "GAP_POSITIVE":
        margin, mname = rel(res.gap), "relative gap lower bound (exhibited alpha)"
    elif res.verdict == "GAP_NEGATIVE":
        margin, mname = rel(res.gap_upper_bound), "relative gap upper bound (negative)"
    else:
        margin, mname = None, ""
    details = {"numerical_verdict": res.verdict,
               "bounds": {k: abs(v) for k, v in (("loss_value", L), ("gap_lower", res.gap),
                                                  ("gap_upper_bound", res.gap_upper_bound), ("tol_times_L", res.tol * L))
                          if isinstance(v, float) and v != 0}}
    return VerificationReport(condition="gradient_basis_gap", paper=PAPER, equation=EQUATION, statement=STATEMENT,
                              inputs=inputs, verdict=verdict, margin=margin, margin_name=mname,
                              certificate=to_jsonable(res), certificate_type=type(res).__name__,
                              timings={"tangent_solve": res.seconds, "total": time.perf_counter() - t0},
                              environment=environment(), message=f"{res.verdict}: {res.message}", details=details)
