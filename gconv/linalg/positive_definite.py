"""``certify_positive_definite`` — the Rump step on a given symmetric matrix (docs/certification.md §1).

Used for the seed-004 Gram matrix and for NTK Grams: the caller forms G (in floating point) and
passes ``extra_shift`` ≥ ‖G_true − G‖₂, the error of forming it (e.g. γ_k·‖|Φ||Φ|ᵀ‖₂ for
G = fl(ΦΦᵀ) with inner length k).  The certificate then speaks about G_true.
"""
from __future__ import annotations

import math
import time
from fractions import Fraction

import numpy as np
import torch

from gconv._utils import Timings, available_memory, format_bytes, parse_bytes, progress as _progress
from gconv.linalg import _fp
from gconv.linalg._blas import quiet_other_pools
from gconv.linalg.certificate import CertificateStatus, MethodStep, RankCertificate
from gconv.linalg.cholesky import (factor_flops, left_looking_cholesky, null_vector_candidate, pick_block, rump_rho,
                                   rump_rho_prior, total_flops)
from gconv.linalg.plan import MemoryBudgetError, PeakMemory
from gconv.linalg.storage import PackedLower

_ETA = Fraction(1, 2 ** 1074)


def _as_square(G) -> tuple[np.ndarray, str]:
    if isinstance(G, torch.Tensor):
        if G.is_complex():
            raise TypeError("certify_positive_definite: complex matrices are not supported")
        dt = str(G.dtype).replace("torch.", "")
        a = G.detach().to("cpu", torch.float64).numpy()
    else:
        a0 = np.asarray(G)
        if a0.dtype.kind not in "fiu":
            raise TypeError(f"certify_positive_definite: unsupported dtype {a0.dtype}")
        dt = str(a0.dtype)
        a = a0 if a0.dtype == np.float64 else a0.astype(np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"certify_positive_definite: G must be a square matrix, got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError("certify_positive_definite: G is empty (0 × 0)")
    return a, dt


def certify_positive_definite(G, *, extra_shift: float = 0.0, memory_budget=None, device=None,
                              progress: bool = False, shift_factor: float = 2.0, block_size: int | None = None,
                              tighten_margin: bool | None = None) -> RankCertificate:
    """Certify that the symmetric matrix G (more precisely G_true with ‖G_true − G‖₂ ≤ ``extra_shift``)
    is positive definite.

    Only the lower triangle of G is factored; if G is not exactly symmetric, ½‖G − Gᵀ‖_F is added to
    the error budget so the statement covers the symmetric part (G + Gᵀ)/2.  Exact power-of-two
    diagonal scaling D G D first; then the Rump-type shifted Cholesky.

    Returns a :class:`RankCertificate`: ``CERTIFIED_FULL_RANK`` means *positive definite*
    (``details["positive_definite"] = True``; ``lambda_min_lower`` > 0 a rigorous bound on λ_min(G_true),
    ``sigma_min_lower`` = √lambda_min_lower, the σ_min of any factor Φ with G_true = ΦΦᵀ);
    ``CERTIFIED_RANK_DEFICIENT`` only for an exactly zero row with ``extra_shift == 0``;
    otherwise ``INCONCLUSIVE`` with the numbers (``details["positive_definite"] = False`` when a
    diagonal entry proves G itself is not positive definite).
    """
    t0 = time.perf_counter()
    timings = Timings()
    steps = []
    if not (isinstance(extra_shift, (int, float)) and math.isfinite(extra_shift) and extra_shift >= 0):
        raise ValueError(f"extra_shift must be a finite number ≥ 0, got {extra_shift!r}")
    if not (shift_factor > 1 and math.isfinite(shift_factor)):
        raise ValueError(f"shift_factor must be > 1, got {shift_factor!r}")
    if device is not None and torch.device(device).type != "cpu":
        raise NotImplementedError("certify_positive_definite runs on CPU; pass a CPU tensor / array "
                                  "(the GPU path is certify_full_row_rank(device='cuda'))")
    with timings.section("setup"):
        A, dt = _as_square(G)
    n = A.shape[0]
    precision = "float64" if dt == "float64" else f"float64 ({dt} input upcast exactly)"
    with PeakMemory() as pm, quiet_other_pools():
        cert = _certify_pd(A, n, float(extra_shift), memory_budget, progress, shift_factor, block_size,
                           timings, steps, precision, tighten_margin)
    cert.timings = {k: round(v, 6) for k, v in timings.items()}
    cert.timings["total"] = round(time.perf_counter() - t0, 6)
    cert.peak_memory_bytes = int(pm.peak)
    return cert


def _min_eig_unscaled(store, f, n) -> float:
    """Estimate λ_min(G) = λ_min(D⁻¹ (L Lᵀ) D⁻¹) by inverse iteration (G⁻¹ = D (L Lᵀ)⁻¹ D)."""
    dd = np.ldexp(1.0, f)
    x = np.random.default_rng(0).standard_normal(n)
    x /= np.linalg.norm(x)
    lam = 0.0
    for _ in range(30):
        y = dd * store.solve_lower_t(store.solve_lower(dd * x, n), n)
        ny = np.linalg.norm(y)
        if not np.isfinite(ny) or ny == 0:
            return 0.0
        new, x = 1.0 / ny, y / ny
        if abs(new - lam) <= 1e-3 * new:
            return new
        lam = new
    return lam


def _certify_pd(A, n, extra, memory_budget, progress, shift_factor, block_size, timings, steps, precision,
                tighten_margin=None):
    def cert(status, reason, **kw):
        det = kw.pop("details", {})
        return RankCertificate(status=status, n=n, D=n, methods=list(steps), precision=precision, reason=reason,
                               details=det, **kw)

    b = pick_block(n, block_size)
    need = PackedLower.packed_bytes(n, b) + 8 * n * b * 2 + 8 * n * 16
    budget = parse_bytes(memory_budget)
    free = available_memory()
    limit = min(budget, int(free * 0.95)) if budget is not None else int(free * 0.85)
    if need > limit:
        raise MemoryBudgetError(f"certify_positive_definite: n = {n} needs {format_bytes(need)} (packed factor "
                                f"with block {b}); the limit is {format_bytes(limit)}")
    with timings.section("checks"):
        if not np.isfinite(A).all():
            r, c = np.argwhere(~np.isfinite(A))[0]
            raise ValueError(f"certify_positive_definite: G contains {'NaN' if np.isnan(A[r, c]) else 'Inf'} "
                             f"(first at row {r}, column {c})")
        L = np.tril(A, -1)
        U = np.triu(A, 1).T
        asym2 = _fp.frob_sq_up(L - U) if not np.array_equal(L, U) else Fraction(0)
        del L, U
        d = np.diag(A).copy()
        zero = np.nonzero(~np.any(A != 0, axis=1) & ~np.any(A != 0, axis=0))[0]   # row and column i zero
        lam_max_up = _fp.fr(float(_fp.inflate_up(np.abs(A).sum(axis=1), n, 0).max())) + _fp.fr(extra)
    details = {"positive_definite": None, "asymmetry_frobenius": float(_fp.sqrt_up(asym2))}
    if zero.size and extra == 0:
        steps.append(MethodStep("exact_checks", "zero_row", {"rows": zero[:20].tolist()}))
        details.update(positive_definite=False, rank_upper_bound=n - zero.size)
        return cert(CertificateStatus.CERTIFIED_RANK_DEFICIENT,
                    f"row and column {zero[0]} of G are exactly zero: G (and its symmetric part) is singular",
                    details=details)
    if (d <= 0).any():
        i = int(np.argmin(d))
        proven = extra == 0          # e_iᵀ G e_i = G_ii ≤ 0: the quadratic form is not positive
        steps.append(MethodStep("exact_checks", "nonpositive_diagonal", {"row": i, "value": float(d[i])}))
        details.update(positive_definite=False if proven else None)
        return cert(CertificateStatus.INCONCLUSIVE,
                    f"G[{i},{i}] = {d[i]:.3e} ≤ 0" + (": G is not positive definite" if proven else
                                                       " (and the error budget may hide the true value)"),
                    details=details, lambda_max_upper=_fp.round_up(lam_max_up))
    steps.append(MethodStep("exact_checks", "passed", {}))
    # exact power-of-two scaling D G D, f_i ≈ −log2(G_ii)/2 (per row when the error budget is zero; one
    # common power of two otherwise, so that D's spread does not multiply the caller's extra_shift)
    f = -np.round(np.log2(d) / 2).astype(np.int64)
    if extra > 0 or asym2 > 0:
        f[:] = -int(np.round(np.log2(d.max()) / 2))
    fmax = int(f.max())

    pf = np.ldexp(1.0, f)

    def panel(k):
        # D G D entries: two products by powers of two, exact while the intermediate is normal; a
        # subnormal final result loses at most η/2 (covered by the n·η term of the error budget)
        s, w = k * b, min(b, n - k * b)
        with np.errstate(under="ignore", over="ignore"):
            t = A[s:, s:s + w] * pf[s:, None]
            if ((t != 0) & (np.abs(t) < 2.0 ** -1022)).any():
                return np.ascontiguousarray(np.ldexp(A[s:, s:s + w], f[s:, None] + f[None, s:s + w]))
            t *= pf[None, s:s + w]
        return t

    dsc = np.ldexp(d, 2 * f)
    two = Fraction(2) ** (2 * fmax)
    eps = (_fp.fr(extra) + _fp.fr(_fp.sqrt_up(asym2)) / 2) * two + n * _ETA
    rho0 = rump_rho_prior(dsc)
    c_need = rho0 + eps
    c = _fp.round_up(_fp.fr(shift_factor) * rho0 + eps)       # surplus (shift_factor − 1)·ρ = the margin
    store = PackedLower(n, b)
    bar = _progress(total=round(total_flops(n, b) / 1e9, 2), desc=f"certify PD (n={n})", enabled=progress,
                    unit="GFLOP")
    fl = factor_flops(n, b)
    with timings.section("cholesky"):
        try:
            out = left_looking_cholesky(store, panel, c, bar=bar, flops_fn=lambda k: round(fl(k) / 1e9, 2))
        finally:
            bar.close()
    info = {"shift": c, "shift_needed": _fp.round_up(c_need), "error_budget_scaled": _fp.round_up(eps),
            "scaling_exponents": [int(f.min()), fmax], "block": b}
    lam_max = _fp.round_up(lam_max_up)
    if out.success:
        rho = rump_rho(out.diag_tilde)
        lam_s = _fp.fr(c) - rho - eps
        info["rho"] = _fp.round_up(rho)
        if lam_s > 0:
            steps.append(MethodStep("rump_cholesky", "certified", dict(info)))
            lam = lam_s / two
            if tighten_margin or (tighten_margin is None and n <= 8192):
                # refine in the uniformly scaled matrix 2^{2g}·G, shift ≈ half its estimated λ_min
                g = -int(np.round(np.log2(d.max()) / 2))
                lam_est = _min_eig_unscaled(store, f, n)
                c2 = _fp.round_up(0.5 * (lam_est * 2.0 ** (2 * g)))
                two_u = Fraction(2) ** (2 * g)
                eps_u = (_fp.fr(extra) + _fp.fr(_fp.sqrt_up(asym2)) / 2) * two_u + n * _ETA
                if _fp.fr(c2) / two_u > 4 * lam:
                    store.release_all()
                    store = PackedLower(n, b)
                    pg = 2.0 ** g

                    def panel_u(k):
                        s_, w_ = k * b, min(b, n - k * b)
                        with np.errstate(under="ignore", over="ignore"):
                            t = A[s_:, s_:s_ + w_] * pg
                            return t * pg
                    with timings.section("cholesky_refine"):
                        out2 = left_looking_cholesky(store, panel_u, c2)
                    ok = False
                    if out2.success:
                        lam2 = (_fp.fr(c2) - rump_rho(out2.diag_tilde) - eps_u) / two_u
                        if lam2 > lam:
                            lam, ok = lam2, True
                            info.update(refined_shift=c2, refined_scaling_exponent=g)
                    steps.append(MethodStep("margin_refinement", "improved" if ok else "not improved",
                                            {"shift": c2}))
            details.update(positive_definite=True, **info)
            lam_f = _fp.round_down(lam)
            return cert(CertificateStatus.CERTIFIED_FULL_RANK,
                        f"shifted Cholesky certified positive definiteness: λ_min ≥ {lam_f:.3e} (shift {c:.3e} in "
                        f"the scaled matrix covers the rounding bound {float(rho):.3e} and the error budget "
                        f"{float(eps):.3e})", rank=n, lambda_min_lower=lam_f, sigma_min_lower=_fp.sqrt_down(lam),
                        lambda_max_upper=lam_max, sigma_max_upper=_fp.sqrt_up(lam_max_up), details=details)
        steps.append(MethodStep("rump_cholesky", "no_margin", info))
        details.update(info)
        return cert(CertificateStatus.INCONCLUSIVE, "the factorisation succeeded but without a positive margin",
                    details=details, lambda_max_upper=lam_max)
    info.update(failed_column=out.failed_column, pivot=out.pivot)
    # rigorous upper bound on λ_min(G) from the breakdown vector (Rayleigh quotient)
    try:
        v = null_vector_candidate(store, out)
        if v is not None:
            j = out.failed_column
            x = np.ldexp(v, f[:j + 1])
            Gx = A[:j + 1, :j + 1] @ x
            q = float(x @ Gx)
            err = _fp.inflate_up(np.abs(x) @ _fp.inflate_up(np.abs(A[:j + 1, :j + 1]) @ np.abs(x), j + 1, j + 1),
                                 j + 1, j + 1) * _fp.round_up(_fp.gamma(2 * j + 4)) * 2
            num = _fp.fr(q) + _fp.fr(float(err)) + _fp.fr(extra) * _fp.fr(float(x @ x)) * 2
            den = _fp.fr(float(x @ x)) / (1 + _fp.gamma(j + 2))
            ub = num / den
            info["lambda_min_upper"] = _fp.round_up(ub)
    except Exception as exc:  # diagnostics only
        info["lambda_min_upper_error"] = repr(exc)
    steps.append(MethodStep("rump_cholesky", "breakdown", info))
    details.update(info)
    reason = (f"Cholesky of the scaled G shifted by {c:.3e} broke down at row {out.failed_column} "
              f"(pivot ≈ {out.pivot:.3e})" if out.pivot is not None else "Cholesky broke down")
    if "lambda_min_upper" in info:
        reason += f"; λ_min(G) ≤ {info['lambda_min_upper']:.3e} (rigorous)"
    return cert(CertificateStatus.INCONCLUSIVE, reason, details=details, lambda_max_upper=lam_max)
