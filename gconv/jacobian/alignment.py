"""The data–architecture alignment condition (seed 000, Definition 2): is vec(Y_ℓ) ∈ Col(J(θ))?

Y_ℓ = Y for the squared loss and 2Y − 1 for cross-entropy with one-hot Y (seed 000 §2.1.2), ordered
sample-major like the rows of :class:`Jacobian`.

Routes (``method``):

``"lsmr"`` / ``"lsqr"`` — matrix-free, in torch (CPU or GPU): min ‖J x − y‖ with only J·v and Jᵀ·u,
    right-preconditioned by a column scaling (Col(J·D) = Col(J)). At the end r = y − J x and Jᵀr are
    recomputed from scratch. Verdicts at the relative tolerance ``tol``:

    * ``ALIGNED``: ‖r‖ ≤ tol·‖y‖ — shown by the exhibited x (an a-posteriori check, not an estimate);
    * ``NOT_ALIGNED``: the solver stopped at a least-squares point (istop 2 or 5) and the distance of
      y from Col(J), bounded below by ‖r‖ − ‖(JD)⁺‖·‖(JD)ᵀr‖ with the solver's estimate of
      ‖(JD)⁺‖, exceeds tol·‖y‖ (an *estimate*: the pseudo-inverse norm is the solver's estimate);
    * ``INCONCLUSIVE``: anything else (iteration limit, condition limit, a least-squares point too
      close to call).

``"gram"`` — K = J Jᵀ (streamed by :func:`ntk_gram`, accumulated in fp64), a = (K + τI)⁻¹ y by one
    in-place Cholesky, x = Jᵀa and the same a-posteriori residual check on J for ``ALIGNED``. τ is the
    noise level of the computed J and Gram (:func:`gram_noise_level`); τ·a = y − K a, the Tikhonov
    residual, is the part of y that J resolves only at singular values ≲ √τ: ``NOT_ALIGNED`` when it
    exceeds tol·‖y‖ — a numerical verdict at that noise level (as ``matrix_rank`` is a numerical
    rank) — and ``INCONCLUSIVE`` when y is resolved in K but the residual on J (in J's dtype) cannot
    be brought below tol.

``"exact"`` — K as for "gram", then ``gconv.linalg.in_column_space(K, y, rtol=tol)`` (Col(J Jᵀ) =
    Col(J)): a certified verdict about the computed K (``certified=True``) when gconv.linalg proves
    dist(y, Col K) ≤ tol·‖y‖ or a lower bound above it; otherwise the "gram" route's numerical verdict
    with ``certified=False`` and gconv.linalg's reason in the message. (Exact membership in the column
    space of a rank-deficient matrix is not decidable in floating point, only within a tolerance.)

``"auto"`` — "exact" when n·m_y ≤ ``exact_max_rows`` and gconv.linalg provides it; else "gram"
when K and one copy (2·(n·m_y)² float64) fit in the memory budget; else "lsmr".
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import torch

from gconv.jacobian._losses import as_loss
from gconv.jacobian.operator import Jacobian
from gconv.jacobian.solvers import ColScaled, ISTOP_MEANING, lsmr, lsqr

VERDICTS = ("ALIGNED", "NOT_ALIGNED", "INCONCLUSIVE")


@dataclass
class AlignmentResult:
    """Outcome of :func:`alignment`. The solution x (J x ≈ Y_ℓ) is ``.solution`` (not a JSON field)."""
    verdict: str                    # "ALIGNED" | "NOT_ALIGNED" | "INCONCLUSIVE"
    method: str                     # "lsmr" | "lsqr" | "gram" | "exact"
    istop: int | None               # scipy-style stop code of the iterative solver (None for gram/exact)
    istop_meaning: str | None
    iterations: int
    residual_norm: float            # ‖Y_ℓ − J x‖, recomputed
    relative_residual: float        # ‖Y_ℓ − J x‖ / ‖Y_ℓ‖
    normal_residual_norm: float     # ‖Jᵀ(Y_ℓ − J x)‖, recomputed
    target_norm: float
    tol: float
    distance_lower_estimate: float | None   # estimated lower bound on dist(Y_ℓ, Col J) (relative to ‖Y_ℓ‖)
    norm_estimate: float | None     # of the (preconditioned) operator
    cond_estimate: float | None
    solution_norm: float
    precondition: str
    loss: str
    target_transform: str           # "Y" or "2Y-1"
    n: int
    m_y: int
    d: int
    dtype: str
    device: str
    coupling: str
    jv_mode: str
    seconds: float
    message: str
    certificate: dict | None = None
    settings: dict = field(default_factory=dict)
    certified: bool = False         # True only when the verdict rests on a gconv.linalg proof ("exact")


def _default_tol(dtype):
    return math.sqrt(torch.finfo(dtype).eps)


def data_targets(J: Jacobian) -> torch.Tensor:
    """All targets of J's data source, in order (streamed; inputs are not kept)."""
    if not J.data.has_targets:
        raise ValueError("the data has no targets; pass (X, Y) or a dataset of (x, y) pairs")
    return torch.cat([torch.as_tensor(b.y) for b in J.data.batches(max(J.chunk_vjp, 1024))])


def alignment_target(J: Jacobian, loss, Y) -> torch.Tensor:
    """vec(Y_ℓ) as an (n·m_y,) vector in J's dtype and row order."""
    L = as_loss(loss)
    Ym = L.target_matrix(Y, J.n, J.m_y, for_alignment=True)
    return L.aligned_target(Ym).to(J.device, J.dtype).reshape(-1)


def column_scaling(J: Jacobian, kind: str = "tensor", *, probes: int = 8, seed: int = 0) -> torch.Tensor:
    """Positive column scales s (d,) that equalise J's columns (a right preconditioner).

    ``"tensor"``: one scale per parameter tensor, 1/RMS column norm, from a Hutchinson estimate
    ‖J_p‖_F² = E‖J_pᵀu‖² with ``probes`` Rademacher vectors (one multi-RHS Jᵀ pass).
    ``"column"``: exact column norms diag(JᵀJ) from a pass over the dense row blocks.
    ``"none"``: ones. Scales are capped at 1/(√eps·max column RMS), so numerically zero columns are not
    amplified into noise.
    """
    if kind == "none":
        return torch.ones(J.d, dtype=J.dtype, device=J.device)
    if kind == "tensor":
        g = torch.Generator().manual_seed(seed)
        U = (torch.randint(0, 2, (J.shape[0], probes), generator=g) * 2 - 1).to(J.device, J.dtype)
        G = J.rmm(U)
        sq = (G.to(torch.float64) ** 2).mean(1)
        rms = torch.empty(J.d, dtype=torch.float64, device=J.device)
        for a, b in zip(J.tm.offsets, J.tm.offsets[1:]):
            rms[a:b] = math.sqrt(float(sq[a:b].sum()) / (b - a))
    elif kind == "column":
        sq = torch.zeros(J.d, dtype=torch.float64, device=J.device)
        for blk in J.row_blocks():
            sq += (blk.to(torch.float64) ** 2).sum(0)
        rms = sq.sqrt()
    else:
        raise ValueError(f"precondition must be 'tensor', 'column' or 'none', got {kind!r}")
    # numerically zero columns (e.g. a bias in front of a train-mode BatchNorm) must not be blown up to
    # unit size: their rounding noise would then pollute every product
    floor = math.sqrt(torch.finfo(J.dtype).eps) * float(rms.max())
    if floor == 0:
        return torch.ones(J.d, dtype=J.dtype, device=J.device)
    return (1.0 / rms.clamp_min(floor)).to(J.dtype)


def check_alignment(J: Jacobian, y: torch.Tensor, *, method="auto", tol=None, atol=None, btol=None, conlim=1e8,
                    maxiter=None, precondition="tensor", x0=None, exact_max_rows=8192, progress=False,
                    loss_name="", target_transform="") -> "AlignmentResult":
    """Is y ∈ Col(J)? The engine of :func:`alignment` (for a prepared :class:`Jacobian` and target)."""
    t0 = time.perf_counter()
    tol = _default_tol(J.dtype) if tol is None else float(tol)
    if not (0 < tol < 1):
        raise ValueError(f"alignment: tol must be in (0, 1), got {tol}")
    N = J.shape[0]
    if y.shape != (N,):
        raise ValueError(f"alignment: the target has shape {tuple(y.shape)}, J has {N} rows")
    if method not in ("auto", "lsmr", "lsqr", "gram", "exact"):
        raise ValueError(f"alignment: method must be 'auto', 'lsmr', 'lsqr', 'gram' or 'exact', got {method!r}")
    if method == "auto":
        if N <= exact_max_rows and _linalg_has("in_column_space"):
            method = "exact"
        elif 2 * N * N * 8 <= J.memory_budget:           # K and one copy, float64
            method = "gram"
        else:
            method = "lsmr"
    ynorm = float(torch.linalg.vector_norm(y))
    base = dict(target_norm=ynorm, tol=tol, loss=loss_name, target_transform=target_transform, n=J.n, m_y=J.m_y,
                d=J.d, dtype=str(J.dtype).replace("torch.", ""), device=str(J.device), coupling=J.coupling,
                jv_mode=J.jv_mode)
    if ynorm == 0:
        res = AlignmentResult(verdict="ALIGNED", method=method, istop=0, istop_meaning=ISTOP_MEANING[0], iterations=0,
                              residual_norm=0.0, relative_residual=0.0, normal_residual_norm=0.0,
                              distance_lower_estimate=None, norm_estimate=None, cond_estimate=None, solution_norm=0.0,
                              precondition="none", seconds=time.perf_counter() - t0,
                              message="Y_ℓ = 0 lies in every column space", **base)
        res.solution = torch.zeros(J.d, dtype=J.dtype, device=J.device)
        return res
    if method in ("gram", "exact"):
        return _gram_route(J, y, method, tol, t0, base, progress)

    atol = tol * 1e-2 if atol is None else float(atol)
    btol = tol if btol is None else float(btol)
    maxiter = min(4 * min(N, J.d) + 20, 3000) if maxiter is None else int(maxiter)
    s = column_scaling(J, precondition)
    A = ColScaled(J, s)
    z0 = None if x0 is None else torch.as_tensor(x0).to(J.device, J.dtype) / s
    solver = lsmr if method == "lsmr" else lsqr
    out = solver(A, y, atol=atol, btol=btol, conlim=conlim, maxiter=maxiter, x0=z0, progress=progress,
                 record_every=0)
    x = s * out.x
    r = y - J.mv(x)
    rn = float(torch.linalg.vector_norm(r))
    Jtr = J.rmv(r)
    jtrn = float(torch.linalg.vector_norm(Jtr))
    ajtrn = float(torch.linalg.vector_norm(s * Jtr))
    relres = rn / ynorm
    dist = None
    if out.norma > 0:
        pinv = out.conda / out.norma
        if method == "lsmr":
            pinv *= math.sqrt(max(1, min(out.itn, N, J.d)))
        dist = max(0.0, rn - pinv * ajtrn) / ynorm
    if relres <= tol:
        verdict, msg = "ALIGNED", f"‖r‖/‖Y_ℓ‖ = {relres:.3g} ≤ tol = {tol:.3g} (checked on the recomputed residual)"
    elif out.istop in (2, 5) and dist is not None and dist > tol:
        verdict, msg = "NOT_ALIGNED", (f"least-squares point reached ({ISTOP_MEANING[out.istop]}); estimated distance "
                                       f"of Y_ℓ from Col(J) ≥ {dist:.3g}·‖Y_ℓ‖ > tol = {tol:.3g}")
    else:
        why = ISTOP_MEANING[out.istop]
        if out.istop in (2, 5):
            why += f", but the estimated distance {dist:.3g}·‖Y_ℓ‖ does not clear tol = {tol:.3g}"
        verdict, msg = "INCONCLUSIVE", f"‖r‖/‖Y_ℓ‖ = {relres:.3g} > tol = {tol:.3g}; solver stopped: {why}"
    res = AlignmentResult(verdict=verdict, method=method, istop=out.istop, istop_meaning=ISTOP_MEANING[out.istop],
                          iterations=out.itn, residual_norm=rn, relative_residual=relres, normal_residual_norm=jtrn,
                          distance_lower_estimate=dist, norm_estimate=out.norma, cond_estimate=out.conda,
                          solution_norm=float(torch.linalg.vector_norm(x)), precondition=precondition,
                          seconds=time.perf_counter() - t0, message=msg,
                          settings=dict(atol=atol, btol=btol, conlim=conlim, maxiter=maxiter), **base)
    res.solution = x
    return res


def _linalg_has(name: str) -> bool:
    try:
        import gconv.linalg as L
    except Exception:  # noqa: BLE001
        return False
    return hasattr(L, name)


def gram_noise_level(J: Jacobian, K: torch.Tensor) -> float:
    """τ: the eigenvalue level of K = J Jᵀ below which directions are not resolved numerically.

    max of (10·eps_J·‖J‖_F)² — rounding errors of the computed Jacobian entries, eps_J of J's dtype —
    and 10·N·eps64·max_i K_ii — rounding of the float64 Gram and its factorisation. A heuristic scale,
    reported with every verdict that depends on it.
    """
    N = K.shape[0]
    tr = float(K.diagonal().sum())
    eps_j = torch.finfo(J.dtype).eps
    return max((10 * eps_j) ** 2 * tr, 10 * N * torch.finfo(torch.float64).eps * float(K.diagonal().max()))


def _cholesky_solve_inplace(K: torch.Tensor, shift: float, rhs: torch.Tensor):
    """(K + shift·I)⁻¹ rhs, factorising K in place (K is destroyed); None if not positive definite."""
    K.diagonal().add_(shift)
    if K.device.type == "cpu":
        import scipy.linalg as sl
        try:
            c = sl.cho_factor(K.numpy(), lower=True, overwrite_a=True, check_finite=False)
        except (sl.LinAlgError, ValueError):
            return None
        return torch.from_numpy(sl.cho_solve(c, rhs.numpy(), check_finite=False))
    L, info = torch.linalg.cholesky_ex(K)
    if int(info) != 0:
        return None
    return torch.cholesky_solve(rhs[:, None], L)[:, 0]


def _gram_route(J: Jacobian, y, method, tol, t0, base, progress):
    from gconv.jacobian.ntk import _gram, ntk_cost_model
    ynorm = base["target_norm"]
    how = ntk_cost_model(J)["choice"]
    how = "jacobian_contraction" if how == "ntk_vector_products" else how     # products accumulated in fp64
    K = _gram(J, None, method=how, trace=False, diagonal_only=False, progress=progress, acc_dtype=torch.float64)
    yd = y.to(torch.float64)
    tau = gram_noise_level(J, K)
    cert = {"gram": f"K = J Jᵀ accumulated in float64 ({how})", "noise_level": tau, "lambda_max_bound": float(K.diagonal().sum())}
    if method == "exact":
        import gconv.linalg as GL
        # dist(Y_ℓ, Col K) ≤ tol·‖Y_ℓ‖ is provable even for a rank-deficient K; exact membership is not
        ics = GL.in_column_space(K, yd, rtol=tol)
        status = getattr(getattr(ics, "status", None), "value", getattr(ics, "status", None))
        cert.update({"route": "gconv.linalg.in_column_space(K, Y_ℓ, rtol=tol)", "status": status,
                     "certified": bool(getattr(ics, "certified", False)), "details": _public_fields(ics)})
        if cert["certified"] and status in ("IN_COLUMN_SPACE", "NOT_IN_COLUMN_SPACE"):
            verdict = "ALIGNED" if status == "IN_COLUMN_SPACE" else "NOT_ALIGNED"
            msg = f"gconv.linalg.in_column_space(K, Y_ℓ, rtol={tol:.3g}): {status} (certified: {ics.reason})"
        else:
            verdict = None     # no proof: fall back to the numerical verdict of the "gram" route below
            msg_cert = f"gconv.linalg could not certify ({getattr(ics, 'reason', status)}); numerical verdict: "
    # a = (K + τI)⁻¹ y by Cholesky (in place; K is not needed afterwards): x = Jᵀa is checked on J itself,
    # and τ·a = y − K a is the part of y that K resolves only below the noise level (Tikhonov residual)
    N = K.shape[0]
    spare = K.clone() if 2 * N * N * 8 <= J.memory_budget else None     # for a retry with a larger shift
    shift = tau
    a = _cholesky_solve_inplace(K, shift, yd)
    while a is None and spare is not None and shift < 1e3 * tau:
        shift *= 10      # rounding left K + τI indefinite: factorise a fresh copy with a larger shift
        K = spare.clone() if shift < 1e3 * tau else spare
        a = _cholesky_solve_inplace(K, shift, yd)
    del K, spare
    if a is None:
        raise RuntimeError(f"alignment: the Cholesky factorisation of J Jᵀ + τI failed (τ up to {shift:.3g}); K is "
                           "not positive semidefinite to working precision")
    cert["shift"] = shift
    x = J.rmv(a.to(J.dtype))
    r = y - J.mv(x)
    rn = float(torch.linalg.vector_norm(r))
    rel = rn / ynorm
    dist = shift * float(torch.linalg.vector_norm(a)) / ynorm
    cert["tikhonov_residual"] = dist
    certified = method == "exact" and verdict is not None
    if not certified:
        if rel <= tol:
            verdict = "ALIGNED"
            msg = f"‖r‖/‖Y_ℓ‖ = {rel:.3g} ≤ tol = {tol:.3g} for x = Jᵀ(JJᵀ + τI)⁻¹Y_ℓ (recomputed on J)"
        elif dist > tol:
            verdict = "NOT_ALIGNED"
            msg = (f"‖τ(JJᵀ + τI)⁻¹Y_ℓ‖ = {dist:.3g}·‖Y_ℓ‖ > tol = {tol:.3g}: that part of Y_ℓ lies where J's singular "
                   f"values are at or below the noise level √τ = {math.sqrt(shift):.3g} (a numerical verdict at that "
                   "level)")
        else:
            verdict = "INCONCLUSIVE"
            msg = (f"Y_ℓ is resolved by JJᵀ above the noise level (Tikhonov residual {dist:.3g}·‖Y_ℓ‖ ≤ tol), but the "
                   f"residual on J itself is {rel:.3g} > tol = {tol:.3g} (products in {base['dtype']} cannot confirm it)")
        if method == "exact":
            msg = msg_cert + msg
    jtrn = float(torch.linalg.vector_norm(J.rmv(r)))
    res = AlignmentResult(verdict=verdict, certified=certified, method=method, istop=None, istop_meaning=None, iterations=0, residual_norm=rn,
                          relative_residual=rel, normal_residual_norm=jtrn, distance_lower_estimate=dist,
                          norm_estimate=math.sqrt(cert["lambda_max_bound"]), cond_estimate=None,
                          solution_norm=float(torch.linalg.vector_norm(x)), precondition="none",
                          seconds=time.perf_counter() - t0, message=msg, certificate=cert,
                          settings=dict(noise_level=tau), **base)
    res.solution = x
    return res


def _public_fields(obj):
    import dataclasses
    from gconv._utils import to_jsonable
    if dataclasses.is_dataclass(obj):
        return to_jsonable(obj)
    return {k: to_jsonable(v) for k, v in vars(obj).items() if not k.startswith("_")} if hasattr(obj, "__dict__") \
        else str(obj)


def alignment(model, data, loss, *, params=None, method="auto", tol=None, atol=None, btol=None, conlim=1e8,
              maxiter=None, precondition="tensor", x0=None, exact_max_rows=8192, chunk_size=None,
              memory_budget=None, coupling="auto", forward_ad="auto", progress=None) -> AlignmentResult:
    """Seed 000, Definition 2: is vec(Y_ℓ) ∈ Col(∂vec(f_X(θ))/∂θ) at the model's current θ?

    ``data`` must carry targets ((X, Y), or a dataset of (x, y)); ``loss`` as in
    :mod:`gconv.jacobian._losses` ("squared", "cross_entropy", nn.CrossEntropyLoss(), ...).
    ``tol`` is the relative residual at which membership is decided (default √eps of the model dtype:
    3.5e-4 in fp32, 1.5e-8 in fp64). ``atol``/``btol``/``conlim``/``maxiter`` go to LSMR/LSQR
    (defaults tol/100, tol, 1e8, min(4·min(n·m_y, d) + 20, 3000)); ``precondition``: "tensor" | "column" | "none"
    (see :func:`column_scaling`); ``x0``: a warm start (e.g. the previous step's ``.solution``).
    Other arguments as :class:`Jacobian`. See the module docstring for the routes and verdicts.
    """
    if progress is None:
        progress = sys.stderr.isatty()
    J = Jacobian(model, data, params, chunk_size=chunk_size, memory_budget=memory_budget, coupling=coupling,
                 forward_ad=forward_ad)
    L = as_loss(loss)
    y = alignment_target(J, L, data_targets(J))
    return check_alignment(J, y, method=method, tol=tol, atol=atol, btol=btol, conlim=conlim, maxiter=maxiter,
                           precondition=precondition, x0=x0, exact_max_rows=exact_max_rows, progress=progress,
                           loss_name=L.kind, target_transform=L.target_transform)
