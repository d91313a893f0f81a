"""The QR route: a certificate that does not square the condition number (docs/certification.md §4).

For A (n × D, n ≤ D) held in memory (rows scaled exactly by powers of two, A_s = D_s A):

1. Householder QR of A_sᵀ (LAPACK ``dgeqrf``) gives R (n × n) with RᵀR ≈ A_s A_sᵀ;
2. T = fl(R⁻¹)ᵀ (``dtrtri``), an exactly invertible lower-triangular *preconditioner*;
3. P̂ = fl(T A_s), computed by column chunks (``dtrmm``), has nearly orthonormal rows; its Gram
   G̃_P = fl(P̂ P̂ᵀ) ≈ I is certified positive definite by Gershgorin's theorem or, failing that, by
   the Rump-type Cholesky of :mod:`gconv.linalg.cholesky`: λ_min(P̂P̂ᵀ) ≥ λ_P;
4. with F = P̂ − T A_s, |F| ≤ γ_n |T||A_s| + n·η, and ‖|T||A_s|‖₂ bounded from above by the
   Collatz–Wielandt inequality ρ(NᵀN) ≤ max_i (NᵀN v)_i / v_i (any v > 0, N = |T||A_s| ≥ 0):

       σ_min(A_s) ≥ (√λ_P − ‖F‖₂) / ‖T‖₂ ,   σ_min(A) ≥ σ_min(A_s) · 2^{−max e_i}.

Nothing here relies on the (unspecified) constant of the Householder backward-error theorem: R is
only a preconditioner; the proof uses GEMM/TRMM error bounds, Gershgorin / Rump and Collatz–Wielandt.
Cost ≈ 4 n² D flops; memory n·D + 1.5 n² numbers.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
from scipy.linalg import blas as _blas
from scipy.linalg import lapack as _lapack

from gconv._utils import progress as _progress
from gconv.linalg import _fp
from gconv.linalg.cholesky import left_looking_cholesky, pick_block, rump_rho, rump_rho_prior
from gconv.linalg.gram import RowStats, scale_rows
from gconv.linalg.implicit import ImplicitMatrix
from gconv.linalg.storage import PackedLower

_ETA = Fraction(1, 2 ** 1074)


def qr_route_bytes(n: int, D: int, chunk: int = 512) -> int:
    b = pick_block(n)
    return 8 * n * D + 8 * n * n + PackedLower.packed_bytes(n, b) + 8 * n * min(chunk, D) * 2 + 8 * n * b * 2 \
        + 8 * (n + D) * 16


def _cw_norm_sq_up(apply_N, apply_Nt, dim: int, iters: int = 12) -> Fraction:
    """Upper bound on ‖N‖₂² = ρ(NᵀN) for a non-negative N given by upper-bounding products.

    Collatz–Wielandt: for any v > 0, ρ(M) ≤ max_i (Mv)_i / v_i (M ≥ 0).  ``apply_N`` / ``apply_Nt``
    return entrywise *upper bounds* of N·v and Nᵀ·y (v, y ≥ 0), so the ratio stays an upper bound;
    fl(y_i / v_i) ≥ (y_i / v_i)(1 − u) − η is covered by :func:`_fp.inflate_up`.
    """
    v = np.ones(dim)
    best = None
    for _ in range(iters):
        y = apply_Nt(apply_N(v))
        if not np.isfinite(y).all():
            break
        val = _fp.fr(float(_fp.inflate_up(y / v, 1, 1).max()))
        best = val if best is None or val < best else best
        m = y.max()
        if m <= 0:
            return Fraction(0)
        v = y / m + 1e-12
    return Fraction(10) ** 400 if best is None else best


def _abs_mv_rows(M, v, chunk=2048):
    """Upper bounds on |M| v, row chunk by row chunk (no |M| copy)."""
    out = np.empty(M.shape[0])
    for r in range(0, M.shape[0], chunk):
        out[r:r + chunk] = np.abs(M[r:r + chunk]) @ v
    return _fp.inflate_up(out, M.shape[1], M.shape[1])


def _abs_rmv_rows(M, y, chunk=2048):
    """Upper bounds on |M|ᵀ y (y ≥ 0)."""
    out = np.zeros(M.shape[1])
    nb = 0
    for r in range(0, M.shape[0], chunk):
        out += _fp.inflate_up(np.abs(M[r:r + chunk]).T @ y[r:r + chunk], chunk, chunk)
        nb += 1
    return _fp.inflate_up(out, nb, 0)


def _inverse_iteration(R: np.ndarray, e: np.ndarray, iters: int = 8) -> np.ndarray | None:
    """x ≈ argmin ‖R x‖/‖x‖ (A_sᵀ = QR ⇒ ‖A_sᵀx‖ = ‖Rx‖); returned as row coefficients of the
    original matrix, w = 2^{e}·x (for the rigorous σ_min upper bound of :mod:`deficiency`)."""
    from scipy.linalg import solve_triangular
    n = R.shape[0]
    d = np.abs(np.diag(R))
    if d.max() == 0:
        return None
    Rr = R.copy()
    tiny = d.max() * 2.0 ** -52
    Rr[np.diag_indices(n)] = np.where(d < tiny, np.where(np.diag(R) < 0, -tiny, tiny), np.diag(R))
    x = np.random.default_rng(0).standard_normal(n)
    with np.errstate(all="ignore"):
        for _ in range(iters):
            y = solve_triangular(Rr, solve_triangular(Rr, x, trans=1, check_finite=False), check_finite=False)
            ny = np.linalg.norm(y)
            if not np.isfinite(ny) or ny == 0:
                break
            x = y / ny
    if not np.isfinite(x).all():
        return None
    with np.errstate(over="ignore", under="ignore"):
        w = x * np.ldexp(1.0, e - int(np.max(e)))       # a common power of two does not matter
    return w if np.isfinite(w).all() else None


def qr_route(src: ImplicitMatrix, stats: RowStats, *, progress: bool = False, timings=None,
             chunk: int = 512) -> dict:
    """Run the QR route; returns a dict with ``certified`` (bool), ``sigma_min_lower`` (float, for the
    original matrix), and the numbers behind it."""
    n, D = src.shape
    out = {"method": "qr_preconditioned_gram", "n": n, "D": D}
    # 1. A_s (C-order n × D == F-order D × n = A_sᵀ).  One common power of two when it is exact (so the
    #    σ_min bound does not lose the spread of the row norms), else the per-row exponents.
    As = np.empty((n, D))
    e = np.full(n, int(np.clip(stats.exps.min(), -1022, 1023)), dtype=np.int64)
    for s, blk in src.row_blocks():
        sc = scale_rows(blk, e[s:s + blk.shape[0]])
        if not np.array_equal(scale_rows(sc, -e[s:s + blk.shape[0]]), blk):
            e = stats.exps
            break
        As[s:s + blk.shape[0]] = sc
    out["row_scaling"] = "uniform" if np.all(e == e[0]) else "per-row"
    if out["row_scaling"] == "per-row":
        for s, blk in src.row_blocks():
            As[s:s + blk.shape[0]] = scale_rows(blk, e[s:s + blk.shape[0]])
    qr_, tau, _, info = _lapack.dgeqrf(As.T, overwrite_a=1)
    if info != 0:
        raise RuntimeError(f"dgeqrf failed (info={info})")
    R = np.array(np.triu(qr_[:n, :n]), order="F")
    del qr_, tau
    d = np.abs(np.diag(R))
    out["R_diag_ratio"] = float(d.min() / d.max()) if d.max() > 0 else 0.0
    out["null_vector"] = _inverse_iteration(R, e)
    if d.max() == 0 or d.min() <= 4 * n * _fp.U * d.max():
        out.update(certified=False, reason=f"R from the Householder QR is numerically singular "
                                           f"(min|r_ii| / max|r_ii| = {out['R_diag_ratio']:.1e} ≤ 4·n·u): the matrix "
                                           "is numerically rank deficient, no preconditioner")
        return out
    Rinv, info = _lapack.dtrtri(R, lower=0, overwrite_c=1)
    if info != 0 or not np.isfinite(Rinv).all():
        out.update(certified=False, reason="the triangular factor R could not be inverted in binary64")
        return out
    T = np.asfortranarray(np.tril(Rinv.T))          # lower triangular, exactly invertible
    del R, Rinv
    # 2. rebuild A_s (dgeqrf overwrote it)
    for s, blk in src.row_blocks():
        As[s:s + blk.shape[0]] = scale_rows(blk, e[s:s + blk.shape[0]])
    b = pick_block(n)
    store = PackedLower(n, b)
    store.zero()
    ssqP = np.zeros(n)
    nch = 0
    bar = _progress(total=D, desc="certify: QR route", enabled=progress, unit="col")
    for c0 in range(0, D, chunk):
        c1 = min(c0 + chunk, D)
        Pc = np.asfortranarray(As[:, c0:c1])
        Pc = _blas.dtrmm(1.0, T, Pc, side=0, lower=1, trans_a=0, diag=0, overwrite_b=1)
        store.add_outer(Pc)
        ssqP += _fp.sumsq_rows_up(Pc)
        nch += 1
        bar.update(c1 - c0)
    bar.close()
    ssqP = _fp.inflate_up(ssqP, nch, 0)              # sums over chunks of upper bounds
    epsP = _fp.gamma(D) * _fp.sum_up(ssqP) + 8 * n * D * _ETA * (1 + _fp.fr(float(ssqP.max())))
    # 3. ‖F‖₂ ≤ γ_n ‖|T||A_s|‖₂ + √(nD)·n·η   (Collatz–Wielandt on N = |T||A_s|)
    absT = np.abs(T)

    def N(v):
        return _fp.inflate_up(absT @ _abs_mv_rows(As, v), n, n)

    def Nt(y):
        return _abs_rmv_rows(As, _fp.inflate_up(absT.T @ y, n, n))

    normN2 = _cw_norm_sq_up(N, Nt, D)
    Fnorm = _fp.gamma(n) * _fp.fr(_fp.sqrt_up(normN2)) + _fp.fr(_fp.sqrt_up(Fraction(n * D))) * n * _ETA
    # ‖T‖₂ ≤ min(‖T‖_F, √ρ(|T|ᵀ|T|))
    normT2 = min(_fp.frob_sq_up(T),
                 _cw_norm_sq_up(lambda v: _fp.inflate_up(absT @ v, n, n),
                                lambda y: _fp.inflate_up(absT.T @ y, n, n), n))
    normT = _fp.fr(_fp.sqrt_up(normT2))
    if n <= 2048:                                 # ‖T‖₂ itself (|T| can be far larger for a triangular inverse)
        normT = min(normT, _fp.spectral_norm_upper(T))
    del absT, T, As
    out.update(F_norm_upper=float(_fp.round_up(Fnorm)), T_norm_upper=float(_fp.round_up(normT)),
               gram_P_error=float(_fp.round_up(epsP)))
    # 4. λ_min(P̂P̂ᵀ): Gershgorin first — λ_min(G) ≥ min_i (G_ii − Σ_{j≠i}|G_ij|) ≥ min_i (2G_ii − R_i),
    #    R_i ≥ Σ_j |G_ij|; fl(2G_ii − R_i) = (2G_ii − R_i)(1 + δ) gives the exact value within a factor 1 ± u
    diag = store.diagonal()
    rows = _fp.inflate_up(store.abs_row_sums(), n, 0)
    m = float((2 * diag - rows).min())
    gl = _fp.fr(m) / (1 + _fp.fr(_fp.U)) if m > 0 else _fp.fr(m) / (1 - _fp.fr(_fp.U))
    lamP = gl - epsP
    out["gershgorin_lower"] = float(_fp.round_down(gl))
    how = "gershgorin"
    need = Fnorm * Fnorm
    if Fnorm >= Fraction(1, 2):
        out.update(certified=False, reason=f"the error of forming P = T·A is too large (‖F‖ ≤ {float(Fnorm):.3e} is not "
                                           "below 1/2): the preconditioner from R is too inaccurate (cond(A) ≳ 1/(n·u))")
        return out
    if lamP <= need:
        # Rump-type Cholesky of G̃_P − c I
        how = "rump_cholesky"
        c_need = rump_rho_prior(diag) + epsP + need
        c = Fraction(1, 16) if c_need < Fraction(1, 32) else 2 * c_need
        c = _fp.fr(_fp.round_up(c))
        outcome = left_looking_cholesky(store, lambda k: store.get(k), float(c))
        if not outcome.success:
            out.update(certified=False, lambda_P_lower=None, how=how,
                       reason=f"the preconditioned Gram (≈ I) is not certifiably positive definite: Cholesky with "
                              f"shift {float(c):.3e} broke down at row {outcome.failed_column} "
                              f"(pivot {outcome.pivot}) — the preconditioner from R is too inaccurate "
                              f"(cond(A) near 1/(n·u))")
            return out
        lamP = c - rump_rho(outcome.diag_tilde) - epsP
    out["lambda_P_lower"] = float(_fp.round_down(lamP))
    out["how"] = how
    if lamP <= 0:
        out.update(certified=False, reason="no positive lower bound on λ_min(P̂P̂ᵀ)")
        return out
    sigP = _fp.fr(_fp.sqrt_down(lamP))
    sig_TA = sigP - Fnorm
    if sig_TA <= 0:
        out.update(certified=False, reason=f"σ_min(P̂) ≥ {float(sigP):.3e} does not exceed the error bound "
                                           f"‖F‖ ≤ {float(Fnorm):.3e} of forming P̂ = T·A")
        return out
    sig_As = sig_TA / normT
    sig = sig_As * (Fraction(2) ** (-int(e.max())))
    if src.entry_error:
        # the materialised entries differ from the certified matrix's by ≤ u·|a| (+η/2)
        sig -= _fp.fr(src.entry_error) * _fp.fr(_fp.sqrt_up(stats.frob_sq_up)) * (1 + _fp.gamma(2)) + \
            _fp.fr(_fp.sqrt_up(Fraction(n * D))) * _ETA
    if sig <= 0:
        out.update(certified=False, reason="the margin does not survive the error of materialising the products")
        return out
    out.update(certified=True, sigma_min_lower=_fp.round_down(sig),
               sigma_min_lower_scaled=_fp.round_down(sig_As))
    return out
