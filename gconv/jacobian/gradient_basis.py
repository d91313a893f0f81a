"""The gradient-basis gap of seed 001, Theorem 1: L(θ) − inf_α L_θ(α).

L_θ(α) = Σ_i λ_i ℓ(Σ_k α_k ∂_k f(x_i; θ), y_i) = Σ_i λ_i ℓ((J α)_i, y_i) is convex in α (ℓ convex in its
first argument). Theorem 1: at every differentiable critical point θ of L (Assumptions 1–2),
L(θ) = inf_α L_θ(α), so the gap is zero; a positive gap proves θ is not such a point, and a
negative one that f_X(θ) is not in the tangent span (Assumption 2 fails for the selected parameters).

The convex problem is solved matrix-free over :class:`Jacobian` products:

* squared loss — least squares min ‖diag(√λ)(J α − y)‖ by LSMR;
* cross-entropy / binary cross-entropy — Newton-CG with the exact Hessian Jᵀ diag(λ ∇²ℓ) J
  (the tangent model is linear in α), damped by μ = 1e-4·‖∇‖, with Armijo backtracking.

Evidence (every number recomputed from fresh products at the final α̂):

* ``gap = L(θ) − L_θ(α̂)`` is a lower bound on the true gap (inf ≤ L_θ(α̂));
* by convexity, for every α with ‖α‖ ≤ R: L_θ(α) ≥ L_θ(α̂) − ⟨∇L_θ(α̂), α̂⟩ − ‖∇L_θ(α̂)‖·R, hence
  ``gap_upper_bound = L(θ) − L_θ(α̂) + ⟨∇, α̂⟩ + ‖∇‖·R`` bounds the gap over that ball (R = ``radius``,
  default 2‖α̂‖); ``duality_gap`` = the difference of the two bounds.

Verdicts at relative tolerance ``tol`` (default √eps of the model dtype) of L(θ):
``GAP_POSITIVE`` (gap > tol·L), ``ZERO_GAP`` (−tol·L ≤ gap and gap_upper_bound ≤ tol·L),
``GAP_NEGATIVE`` (gap_upper_bound < −tol·L), else ``INCONCLUSIVE``.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import torch

from gconv.jacobian._losses import as_loss
from gconv.jacobian.alignment import data_targets
from gconv.jacobian.operator import Jacobian
from gconv.jacobian.solvers import ISTOP_MEANING, RowScaled, lsmr


@dataclass
class GradientBasisGap:
    """Outcome of :func:`gradient_basis_gap`; the minimiser α̂ is ``.solution`` (not a JSON field)."""
    verdict: str                # "GAP_POSITIVE" | "ZERO_GAP" | "GAP_NEGATIVE" | "INCONCLUSIVE"
    loss_value: float           # L(θ)
    tangent_value: float        # L_θ(α̂) ≥ inf_α L_θ(α)
    gap: float                  # L(θ) − L_θ(α̂) ≤ true gap
    gap_upper_bound: float      # ≥ true gap restricted to ‖α‖ ≤ radius
    radius: float
    gradient_norm: float        # ‖∇L_θ(α̂)‖
    duality_gap: float          # gap_upper_bound − gap
    solution_norm: float
    tol: float
    solver: str
    iterations: int             # LSMR iterations or Newton steps
    inner_iterations: int       # CG iterations (Newton-CG)
    converged: bool
    solver_message: str
    loss: str
    weight: float               # λ_i
    n: int
    m_y: int
    d: int
    dtype: str
    coupling: str
    seconds: float
    message: str
    history: list = field(default_factory=list)   # Newton: (step, L_θ, ‖∇‖, step length, CG iterations)


def _cg(hvp, b, tol, maxiter):
    """Conjugate gradients for H x = b (H symmetric positive semidefinite + damping)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = float(r @ r)
    it = 0
    for it in range(1, maxiter + 1):
        Hp = hvp(p)
        pHp = float(p @ Hp)
        if pHp <= 0:
            if it == 1:
                x = b.clone()
            break
        a = rs / pHp
        x = x + a * p
        r = r - a * Hp
        rs_new = float(r @ r)
        if math.sqrt(rs_new) <= tol:
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x, it


def gradient_basis_gap(model, data, loss, params=None, *, tol=None, radius=None, maxiter=None, cg_maxiter=30,
                       chunk_size=None, memory_budget=None, coupling="auto", forward_ad="auto",
                       progress=None) -> GradientBasisGap:
    """Seed 001 Theorem 1 at the model's current θ: L(θ) − inf_α L_θ(α), with its evidence.

    ``loss``: "squared" | "cross_entropy" | "binary_cross_entropy" or nn.MSELoss / nn.CrossEntropyLoss /
    nn.BCEWithLogitsLoss (see :mod:`gconv.jacobian._losses`; the weights λ_i follow the reduction).
    ``params`` selects θ's coordinates k (default all trainable). ``maxiter``: LSMR iterations (default
    min(4·min(n·m_y, d) + 20, 3000)) or Newton steps (default 50); ``cg_maxiter`` per Newton step.
    """
    t0 = time.perf_counter()
    if progress is None:
        progress = sys.stderr.isatty()
    J = Jacobian(model, data, params, chunk_size=chunk_size, memory_budget=memory_budget, coupling=coupling,
                 forward_ad=forward_ad)
    L = as_loss(loss)
    Y = L.target_matrix(data_targets(J), J.n, J.m_y, for_alignment=False).to(J.device, J.dtype)
    lam = L.weight(J.n, J.m_y)
    tol = math.sqrt(torch.finfo(J.dtype).eps) if tol is None else float(tol)
    f0 = J.outputs()
    L_theta = lam * float(L.value(f0.to(torch.float64), Y.to(torch.float64)).sum())
    hist = []
    inner = 0

    def P_of(Z):
        return lam * float(L.value(Z.to(torch.float64), Y.to(torch.float64)).sum())

    if L.kind == "squared":
        w = math.sqrt(lam)
        N = J.shape[0]
        maxit = min(4 * min(N, J.d) + 20, 3000) if maxiter is None else int(maxiter)
        out = lsmr(RowScaled(J, torch.full((N,), w, dtype=J.dtype, device=J.device)), w * Y.reshape(-1),
                   atol=tol * 1e-3, btol=tol * 1e-3, conlim=0, maxiter=maxit, progress=progress, record_every=0)
        alpha = out.x
        iters, converged, smsg, solver = out.itn, out.istop in (1, 2, 4, 5), ISTOP_MEANING[out.istop], "lsmr"
    else:
        maxit = 50 if maxiter is None else int(maxiter)
        alpha = torch.zeros(J.d, dtype=J.dtype, device=J.device)
        Z = torch.zeros(J.n, J.m_y, dtype=J.dtype, device=J.device)
        P = P_of(Z)
        g0 = None
        converged, smsg, iters = False, "Newton step limit reached", 0
        solver = "newton-cg"
        for k in range(1, maxit + 1):
            iters = k
            grad = J.rmv(lam * L.grad(Z, Y))
            gn = float(torch.linalg.vector_norm(grad))
            g0 = gn if g0 is None else g0
            an = float(torch.linalg.vector_norm(alpha))
            certificate = float(grad @ alpha) + gn * 2 * max(an, 1e-300)
            if gn == 0 or (k > 1 and certificate <= 0.1 * tol * max(L_theta, 1e-300)):
                converged, smsg = True, "the duality gap over the ball ‖α‖ ≤ 2‖α̂‖ is below 0.1·tol·L(θ)"
                iters = k - 1
                break
            mu = 1e-4 * gn

            def hvp(v, Z=Z, mu=mu):
                return J.rmv(lam * L.hvp(Z, J.mv(v).reshape(J.n, J.m_y))) + mu * v
            p, it = _cg(hvp, -grad, min(0.5, math.sqrt(gn / g0)) * gn, cg_maxiter)
            inner += it
            Jp = J.mv(p).reshape(J.n, J.m_y)
            slope = float(grad @ p)
            if slope >= 0:
                p, Jp, slope = -grad, J.mv(-grad).reshape(J.n, J.m_y), -gn * gn
            step = 1.0
            while True:
                Pn = P_of(Z + step * Jp)
                if Pn <= P + 1e-4 * step * slope or step < 1e-12:
                    break
                step *= 0.5
            if Pn > P:
                smsg = "the line search found no decrease (the solution is at the limit of the arithmetic)"
                converged = gn <= 1e3 * torch.finfo(J.dtype).eps * max(g0, 1.0)
                break
            alpha = alpha + step * p
            Z = Z + step * Jp
            P = Pn
            hist.append((k, P, gn, step, it))
        if iters == maxit and not converged:
            smsg = f"Newton step limit ({maxit}) reached"
    # fresh evaluation of the evidence at α̂
    Z = J.mv(alpha).reshape(J.n, J.m_y)
    P = P_of(Z)
    grad = J.rmv(lam * L.grad(Z, Y))
    gn = float(torch.linalg.vector_norm(grad))
    an = float(torch.linalg.vector_norm(alpha))
    R = 2 * an if radius is None else float(radius)
    gap = L_theta - P
    dgap = float(grad.to(torch.float64) @ alpha.to(torch.float64)) + gn * R
    upper = gap + dgap
    scale = max(L_theta, 1e-300)
    if gap > tol * scale:
        verdict = "GAP_POSITIVE"
        msg = (f"the tangent model reaches L_θ(α̂) = {P:.6g} < L(θ) = {L_theta:.6g}: gap ≥ {gap:.3g} — θ is not a "
               "differentiable critical point (seed 001, Theorem 1)")
    elif upper < -tol * scale:
        verdict = "GAP_NEGATIVE"
        msg = (f"inf over ‖α‖ ≤ {R:.3g} of L_θ exceeds L(θ) by ≥ {-upper:.3g}: f_X(θ) is not in the span of the "
               "selected gradients (Assumption 2 fails for this parameter selection)")
    elif gap >= -tol * scale and upper <= tol * scale:
        verdict = "ZERO_GAP"
        msg = f"gap ∈ [{gap:.3g}, {upper:.3g}] over ‖α‖ ≤ {R:.3g}: zero within tol·L(θ) = {tol * scale:.3g}"
    else:
        verdict = "INCONCLUSIVE"
        msg = (f"gap ∈ [{gap:.3g}, {upper:.3g}] (over ‖α‖ ≤ {R:.3g}) does not decide at tol·L(θ) = "
               f"{tol * scale:.3g}; solver: {smsg}")
    res = GradientBasisGap(verdict=verdict, loss_value=L_theta, tangent_value=P, gap=gap, gap_upper_bound=upper,
                           radius=R, gradient_norm=gn, duality_gap=dgap, solution_norm=an, tol=tol, solver=solver,
                           iterations=iters, inner_iterations=inner, converged=converged, solver_message=smsg,
                           loss=L.kind, weight=lam, n=J.n, m_y=J.m_y, d=J.d, dtype=str(J.dtype).replace("torch.", ""),
                           coupling=J.coupling, seconds=time.perf_counter() - t0, message=msg, history=hist)
    res.solution = alpha
    return res
