"""``in_column_space(A, y)`` — is y ∈ Col(A)?  (seed 000 Definition 2, eq. 2.5: vec(Y_ℓ) ∈ Col(J).)

Verdicts (``ColumnSpaceResult.status``), each resting on a proof when ``certified`` is True:

* IN_COLUMN_SPACE, certified — A (m × k, m ≤ k) has *certified full row rank* (then every y is in
  Col A); or, with a tolerance (``rtol``/``atol``), a rigorous upper bound on dist(y, Col A) ≤ tol;
* NOT_IN_COLUMN_SPACE, certified — A has certified full *column* rank with σ_min ≥ s and the
  least-squares residual r of the computed x satisfies ‖r‖ − ‖Aᵀr‖/s > tol (≥ 0), a rigorous lower
  bound on the distance (x* − x = (AᵀA)⁻¹Aᵀr ⇒ ‖A(x* − x)‖ ≤ ‖Aᵀr‖/σ_min);
* INCONCLUSIVE — otherwise, with the residual numbers and ``numerical_status`` (the usual
  tolerance answer: relative residual ≤ ``rtol`` or, without one, 1e-6 as in lsqr's defaults).

A may be dense (tensor / array), a gconv implicit matrix, a scipy ``LinearOperator`` or any object
with ``.shape`` and ``matvec``/``rmatvec`` (or ``mv``/``rmv``); tall or wide.
"""
from __future__ import annotations

import time
from fractions import Fraction

import numpy as np
import torch

from gconv._utils import check_finite, parse_bytes
from gconv.linalg import _fp
from gconv.linalg.certificate import ColumnSpaceResult, ColumnSpaceStatus
from gconv.linalg.implicit import DenseMatrix, ImplicitMatrix, as_implicit
from gconv.linalg.operators import OperatorMatrix

_ETA = Fraction(1, 2 ** 1074)
_NUM_RTOL = 1e-6


def _vec(y, m):
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().to(torch.float64).numpy()
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if y.size != m:
        raise ValueError(f"in_column_space: y has {y.size} entries, A has {m} rows")
    check_finite(y, "in_column_space: y")
    return y


def _residual_bounds(src: ImplicitMatrix, y, x):
    """(‖r̂‖ float, upper bound on ‖y − A x‖ exact, lower bound, r̂) for r̂ = fl(y − fl(A x))."""
    Ax = src._mv(x)
    r = y - Ax
    rn = float(np.linalg.norm(r))
    try:
        aax = src._abs_mv(np.abs(x))               # ≥ |A||x| (rigorous)
    except NotImplementedError:
        return rn, None, None, r
    k = src.D
    g = _fp.round_up(_fp.gamma(k + 1))
    err = _fp.inflate_up((np.abs(y) + aax) * g, 2, 2 + k)   # |fl(y − Ax) − (y − Ax)| entrywise
    e2 = _fp.frob_sq_up(err[None, :])
    ub = _fp.fr(_fp.sqrt_up(_fp.frob_sq_up(r[None, :]))) + _fp.fr(_fp.sqrt_up(e2))
    r2_lo = (_fp.fr(float(r @ r)) - r.size * _ETA) / (1 + _fp.gamma(r.size))
    lo = _fp.fr(_fp.sqrt_down(r2_lo)) - _fp.fr(_fp.sqrt_up(e2)) if r2_lo > 0 else Fraction(0)
    return rn, ub, max(lo, Fraction(0)), r


def in_column_space(A, y, *, rtol: float | None = None, atol: float = 0.0, certify: bool = True,
                    max_bytes="1GiB", maxiter: int | None = None, memory_budget=None,
                    progress: bool = False) -> ColumnSpaceResult:
    """Decide y ∈ Col(A) (see the module docstring for the verdicts and what they rest on).

    ``rtol``/``atol``: ask "dist(y, Col A) ≤ atol + rtol·‖y‖?" instead of exact membership.
    ``certify``: run :func:`certify_full_row_rank` on A (wide) or Aᵀ (tall) when A's rows are available.
    ``max_bytes``: materialise A for a dense least-squares solve up to this size; beyond it LSMR runs
    on the operator.
    """
    t0 = time.perf_counter()
    src = as_implicit(A)
    m, k = src.shape
    if m == 0 or k == 0:
        raise ValueError(f"in_column_space: A is empty ({m} × {k})")
    yv = _vec(y, m)
    ynorm = float(np.linalg.norm(yv))
    tol = None if rtol is None and not atol else float(atol) + (float(rtol) if rtol else 0.0) * ynorm
    details = {"shape": [m, k]}

    def result(status, method, reason, certified, **kw):
        rr = kw.get("residual_norm")
        rel = (rr / ynorm) if (rr is not None and ynorm > 0) else (0.0 if rr is not None else None)
        num_tol = rtol if rtol is not None else _NUM_RTOL
        num = None if rel is None else ("IN_COLUMN_SPACE" if rel <= num_tol else "NOT_IN_COLUMN_SPACE")
        if status == ColumnSpaceStatus.IN_COLUMN_SPACE and certified:
            num = "IN_COLUMN_SPACE"
        details["seconds"] = round(time.perf_counter() - t0, 6)
        return ColumnSpaceResult(status=status, y_norm=ynorm, relative_residual=rel, numerical_status=num,
                                 certified=certified, method=method, reason=reason, details=details, **kw)

    if ynorm == 0:
        return result(ColumnSpaceStatus.IN_COLUMN_SPACE, "trivial", "y = 0 is in every column space", True,
                      residual_norm=0.0, residual_bound=0.0)
    rows_ok = not isinstance(src, OperatorMatrix) or m * k * 8 <= (parse_bytes(max_bytes) or 0)
    cert = None
    if certify and m <= k and rows_ok:
        from gconv.linalg.rank import certify_full_row_rank
        cert = certify_full_row_rank(src, memory_budget=memory_budget, progress=progress)
        details["row_rank_certificate"] = {"status": cert.status.value, "sigma_min_lower": cert.sigma_min_lower,
                                           "reason": cert.reason}
        if cert.certified_full_rank:
            return result(ColumnSpaceStatus.IN_COLUMN_SPACE, "certified_full_row_rank",
                          f"A has certified full row rank {m} (σ_min ≥ {cert.sigma_min_lower:.3e}), so every y is "
                          "in its column space", True, residual_norm=0.0, residual_bound=0.0)
    lim = parse_bytes(max_bytes)
    dense = lim is None or 8 * m * k <= lim
    if dense:
        Ad = src.to_dense() if not isinstance(src, DenseMatrix) else np.asarray(src.to_dense())
        import scipy.linalg as sl
        x = sl.lstsq(Ad, yv, cond=None, check_finite=False, lapack_driver="gelsd")[0]
        dsrc = DenseMatrix(Ad) if not isinstance(src, DenseMatrix) else src
        rn, ub, lo, r = _residual_bounds(dsrc, yv, x)
        method = "dense_lstsq"
        colcert = None
        if certify and m > k:
            from gconv.linalg.rank import certify_full_row_rank
            colcert = certify_full_row_rank(np.ascontiguousarray(Ad.T), memory_budget=memory_budget,
                                            progress=progress)
            details["column_rank_certificate"] = {"status": colcert.status.value,
                                                  "sigma_min_lower": colcert.sigma_min_lower,
                                                  "reason": colcert.reason}
        dist_lo = None
        if colcert is not None and colcert.certified_full_rank and lo is not None:
            # ‖Aᵀ r_exact‖ ≤ ‖fl(Aᵀ r̂)‖ + γ‖|A|ᵀ|r̂|‖ + ‖A‖·‖r_exact − r̂‖
            atr = Ad.T @ r
            g = _fp.round_up(_fp.gamma(m + 1))
            e1 = _fp.inflate_up(_fp.matmul_abs_up(Ad.T, np.abs(r)[:, None])[:, 0] * g, 1, 1 + m)
            normA = _fp.fr(colcert.sigma_max_upper)
            atr_up = _fp.fr(_fp.sqrt_up(_fp.frob_sq_up(atr[None, :]))) + \
                _fp.fr(_fp.sqrt_up(_fp.frob_sq_up(e1[None, :]))) + normA * (ub - lo if ub is not None else 0)
            dl = lo - atr_up / _fp.fr(colcert.sigma_min_lower)
            dist_lo = max(dl, Fraction(0))
            details["normal_residual_upper"] = _fp.round_up(atr_up)
        kw = dict(residual_norm=rn, residual_bound=None if ub is None else _fp.round_up(ub),
                  distance_lower=None if dist_lo is None else _fp.round_down(dist_lo), coefficients=x)
        thr = Fraction(0) if tol is None else _fp.fr(tol)
        if dist_lo is not None and dist_lo > thr:
            return result(ColumnSpaceStatus.NOT_IN_COLUMN_SPACE, method + "+certified_full_column_rank",
                          f"dist(y, Col A) ≥ {float(dist_lo):.3e} > {float(thr):.3e} (rigorous: A has certified full "
                          f"column rank with σ_min ≥ {colcert.sigma_min_lower:.3e})", True, **kw)
        if tol is not None and ub is not None and ub <= thr:
            return result(ColumnSpaceStatus.IN_COLUMN_SPACE, method,
                          f"dist(y, Col A) ≤ ‖y − Ax‖ ≤ {float(ub):.3e} ≤ tol {tol:.3e} (rigorous bound)", True, **kw)
        why = (f"least-squares residual ‖y − Ax‖ = {rn:.3e} (relative {rn / ynorm:.3e})"
               + (f", rigorous bound {float(ub):.3e}" if ub is not None else ""))
        if cert is not None and not cert.certified_full_rank:
            why += f"; full row rank not certified ({cert.status.value})"
        if tol is None and m > k and (colcert is None or not colcert.certified_full_rank):
            why += "; no certified full column rank, so no rigorous distance bound"
        return result(ColumnSpaceStatus.INCONCLUSIVE, method, why, False, **kw)
    # matrix-free: LSMR on the operator
    from scipy.sparse.linalg import lsmr
    op = src.to_scipy()
    sol = lsmr(op, yv, atol=1e-12, btol=1e-12, maxiter=maxiter or 4 * min(m, k) + 20)
    x, istop, itn = sol[0], int(sol[1]), int(sol[2])
    rn, ub, lo, r = _residual_bounds(src, yv, x)
    details.update(lsmr_istop=istop, lsmr_iterations=itn, normal_residual=float(sol[4]))
    kw = dict(residual_norm=rn, residual_bound=None if ub is None else _fp.round_up(ub), coefficients=x)
    if tol is not None and ub is not None and ub <= _fp.fr(tol):
        return result(ColumnSpaceStatus.IN_COLUMN_SPACE, "lsmr",
                      f"dist(y, Col A) ≤ {float(ub):.3e} ≤ tol {tol:.3e} (rigorous bound)", True, **kw)
    return result(ColumnSpaceStatus.INCONCLUSIVE, "lsmr",
                  f"LSMR (istop={istop}, {itn} iterations): ‖y − Ax‖ = {rn:.3e} (relative {rn / ynorm:.3e})"
                  + ("" if ub is None else f", rigorous bound {float(ub):.3e}"), False, **kw)
