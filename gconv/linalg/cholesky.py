"""Rump-type certified Cholesky: a floating-point proof of positive definiteness.

Theorem (docs/certification.md, Thm 1; after Rump, BIT 46 (2006), and Higham, *Accuracy and
Stability*, Thm 10.3).  Let Ã ∈ F^{n×n} be symmetric and let the Cholesky factorisation of Ã,
carried out in binary64 by any algorithm of the standard class (each r_ij from the textbook formula,
inner products in any order, FMA allowed, divisions possibly as multiplications by computed
reciprocals — LAPACK/OpenBLAS potrf, trsm and conventional gemm are of this class), run to
completion.  Then the computed factor R̂ satisfies R̂ᵀR̂ = Ã + ΔA with

    ‖ΔA‖₂ ≤ ρ(Ã) := Σ_j γ_{j+3}/(1 − γ_{j+3}) · Ã_jj + 8n(n + 2 + max_j Ã_jj)·η .

Hence λ_min(Ã) ≥ −ρ(Ã).  If Ã = G̃ − Δ with a diagonal Δ ≥ c·I (the shift, applied with rounding
towards −∞) and ‖G − G̃‖₂ ≤ ε for the exact matrix G of interest, then

    λ_min(G) ≥ c − ρ(Ã) − ε,

and G is positive definite as soon as that number is positive.  ρ is evaluated a posteriori from
the Ã_jj actually factored, in exact rational arithmetic (:mod:`gconv.linalg._fp`).

The factorisation is a blocked *left-looking* Cholesky over :class:`~gconv.linalg.storage.PackedLower`:
block column k is formed (from a panel callback — the Gram is never stored separately), updated by
the finished block columns, factored with LAPACK ``dpotrf`` and ``dtrsm`` and then never touched
again, so finished block columns are checkpoints.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from fractions import Fraction
from typing import Callable

import numpy as np
from scipy.linalg import blas as _blas
from scipy.linalg import lapack as _lapack

from gconv.linalg import _fp
from gconv.linalg.storage import PackedLower, atomic_write_array, read_rows


# ---------------------------------------------------------------- the bound ρ(Ã)
def rump_rho(diag_tilde: np.ndarray) -> Fraction:
    """ρ(Ã) = Σ_j γ_{j+3}/(1−γ_{j+3})·Ã_jj + 8n(n+2+max Ã_jj)·η, as an exact upper bound.

    γ_k/(1−γ_k) = k u/(1 − 2k u) ≤ k u (1 + 4 k u) for 2 k u ≤ 1/2, so
    ρ ≤ u·Σ (j+3) Ã_jj + 4u²·Σ (j+3)² Ã_jj + 8n(n+2+max)η, summed exactly.
    """
    d = np.asarray(diag_tilde, dtype=np.float64)
    n = d.size
    if n == 0:
        return Fraction(0)
    if (d <= 0).any() or not np.isfinite(d).all():
        raise ValueError("rump_rho: the factored diagonal must be positive and finite")
    k = np.arange(4, n + 4, dtype=np.int64)  # j + 3 for j = 1..n
    s1 = _fp.exact_sum(d, weights=k)
    s2 = _fp.exact_sum(d, weights=k * k)
    u = Fraction(1, 2 ** 53)
    eta = Fraction(1, 2 ** 1074)
    return u * s1 + 4 * u * u * s2 + 8 * n * (n + 2 + _fp.fr(float(d.max()))) * eta


def rump_rho_prior(diag_upper: np.ndarray) -> Fraction:
    """ρ evaluated on upper bounds of the diagonal — what the shift must exceed (for planning)."""
    d = np.maximum(np.asarray(diag_upper, dtype=np.float64), np.finfo(float).tiny)
    return rump_rho(d)


# ---------------------------------------------------------------- outcome
@dataclasses.dataclass
class FactorOutcome:
    success: bool
    n: int
    shift: float
    diag_tilde: np.ndarray            # Ã_jj for the columns factored (length n on success)
    failed_column: int | None = None  # global index j of the first pivot that was not positive
    pivot: float | None = None        # the Schur-complement pivot at j (estimate), ≤ 0 in exact terms
    resumed_from: int = 0
    seconds: float = 0.0
    fail_row: np.ndarray | None = None      # row j of the would-be factor, columns 0..j−1
    fail_leading: np.ndarray | None = None  # leading t × t factor of the failing diagonal block


def shift_diagonal(block: np.ndarray, shift: float) -> np.ndarray:
    """Replace the diagonal of the square ``block`` by values ≤ (diag − shift), exactly.

    fl(x − c) is the rounded value of x − c; its predecessor is ≤ x − c, so nextafter(·, −∞)
    guarantees Ã_jj ≤ G̃_jj − c without control of the rounding mode.  Returns the new diagonal.
    """
    d = np.diagonal(block).copy()
    dt = np.nextafter(d - shift, -np.inf)
    np.fill_diagonal(block, dt)
    return dt


def left_looking_cholesky(store: PackedLower, panel_fn: Callable[[int], np.ndarray], shift: float, *,
                          start: int = 0, diag_tilde: np.ndarray | None = None,
                          on_column: Callable | None = None, bar=None, flops_fn=None) -> FactorOutcome:
    """Factor Ã = G̃ − shift·I block column by block column (see module docstring).

    ``panel_fn(k)`` returns a fresh C-ordered (n − r_k) × b_k float64 array holding rows r_k … n−1 of
    block column k of G̃ (only its lower part is read).  Block columns < ``start`` must already be
    in ``store`` (resume); ``diag_tilde`` then carries their Ã_jj.  ``on_column(k, panel, dt)`` is
    called after block column k is final.
    """
    n = store.n
    dtil = np.zeros(n) if diag_tilde is None else np.array(diag_tilde, dtype=np.float64, copy=True)
    t0 = time.perf_counter()
    for k in range(start, store.nblocks):
        s, w = store.start(k), store.width(k)
        P = panel_fn(k)
        if P.shape != (n - s, w) or P.dtype != np.float64 or not P.flags.c_contiguous:
            raise RuntimeError(f"panel {k}: got {P.shape} {P.dtype}, expected C-ordered float64 {(n - s, w)}")
        if not np.isfinite(P).all():
            bad = np.argwhere(~np.isfinite(P))[0]
            raise ValueError(f"the Gram matrix has a non-finite entry at ({s + bad[0]}, {s + bad[1]}): "
                             "overflow while forming it (entries too large even after scaling)")
        dtil[s:s + w] = shift_diagonal(P[:w, :w], shift)
        for j in range(k):
            Lj = store.rows(j, s)                       # (n − s) × b_j
            # Pᵀ (F-order w × (n−s)) −= Lj[:w] Ljᵀ  — one gemm, in place
            _blas.dgemm(-1.0, Lj[:w].T, Lj.T, beta=1.0, c=P.T, trans_a=1, overwrite_c=1)
        A_kk = P[:w, :w].copy()
        _, info = _lapack.dpotrf(P[:w, :w].T, lower=0, clean=0, overwrite_a=1)
        if info < 0:
            raise RuntimeError(f"dpotrf: illegal argument {-info}")
        if info > 0:
            t = info - 1
            out = FactorOutcome(False, n, shift, dtil[:s + t + 1], failed_column=s + t,
                                resumed_from=start, seconds=time.perf_counter() - t0)
            _failure_diagnostics(store, k, A_kk, t, out)
            return out
        P[:w, :w] = np.tril(P[:w, :w])
        if w < n - s:
            # P[w:] ← P[w:] L_kk⁻ᵀ  ⇔  L_kk X = P[w:]ᵀ ; as F-order: U = L_kkᵀ is P[:w,:w].T (upper)
            _blas.dtrsm(1.0, P[:w, :w].T, P[w:].T, side=0, lower=0, trans_a=1, overwrite_b=1)
        store.set(k, P)
        if on_column is not None:
            on_column(k, P, dtil[s:s + w])
        if bar is not None:
            bar.update(flops_fn(k) if flops_fn else 1)
    return FactorOutcome(True, n, shift, dtil, resumed_from=start, seconds=time.perf_counter() - t0)


def _failure_diagnostics(store: PackedLower, k: int, A_kk: np.ndarray, t: int, out: FactorOutcome):
    """Pivot value and the row of the would-be factor at the failing column (for a null vector)."""
    try:
        if t > 0:
            Lt = np.linalg.cholesky(A_kk[:t, :t])
            from scipy.linalg import solve_triangular
            l_cur = solve_triangular(Lt, A_kk[t, :t], lower=True, check_finite=False)
        else:
            Lt, l_cur = np.zeros((0, 0)), np.zeros(0)
        out.pivot = float(A_kk[t, t] - l_cur @ l_cur)
        s = store.start(k)
        j = s + t
        prev = store.row_row(j, upto=s) if s > 0 else np.zeros(0)
        out.fail_row = np.concatenate([prev, l_cur])
        out.fail_leading = Lt
    except np.linalg.LinAlgError:
        out.pivot = float(A_kk[t, t])


def null_vector_candidate(store: PackedLower, outcome: FactorOutcome) -> np.ndarray | None:
    """v = [α; −1] with α = Ã₁₁⁻¹ ã₁ⱼ from the partial factor: vᵀÃv = pivot ≤ 0 (length j+1)."""
    if outcome.fail_row is None:
        return None
    j = outcome.failed_column
    s = (j // store.block) * store.block
    t = j - s
    from scipy.linalg import solve_triangular
    l_prev, l_cur = outcome.fail_row[:s], outcome.fail_row[s:]
    a2 = solve_triangular(outcome.fail_leading, l_cur, lower=True, trans=1, check_finite=False) if t else np.zeros(0)
    if s > 0:
        rhs = l_prev.copy()
        if t:
            k = j // store.block
            # subtract L_cur_rowsᵀ α₂ : rows s..s+t−1 of the previous block columns
            for i in range(k):
                si, wi = store.start(i), store.width(i)
                rhs[si:si + wi] -= store.rows(i, s, s + t).T @ a2
        a1 = store.solve_lower_t(rhs, s)
    else:
        a1 = np.zeros(0)
    return np.concatenate([a1, a2, [-1.0]])


# ---------------------------------------------------------------- checkpoint state for a factorisation
class FactorCheckpoint:
    """Finished block columns (+ their Ã_jj) in ``directory``; ``state.json`` says how many."""

    def __init__(self, directory: str, store: PackedLower):
        self.dir, self.store = directory, store
        os.makedirs(directory, exist_ok=True)

    def _diag_path(self, k):
        return os.path.join(self.dir, f"diag_{k:05d}.bin")

    def finished(self) -> int:
        k = 0
        while k < self.store.nblocks and self.store.has(k) and os.path.exists(self._diag_path(k)):
            k += 1
        return k

    def save(self, k: int, panel: np.ndarray, dt: np.ndarray) -> None:
        atomic_write_array(self._diag_path(k), dt)
        if self.store.backend == "ram":
            atomic_write_array(self.store.path(k), panel)

    def load(self, upto: int) -> np.ndarray:
        d = np.zeros(self.store.n)
        for k in range(upto):
            s, w = self.store.start(k), self.store.width(k)
            d[s:s + w] = read_rows(self._diag_path(k), w, 0, 1)[0]
            self.store.load(k)
        return d


def factor_flops(n: int, block: int, gram_flops_per_entry: float = 0.0) -> Callable[[int], float]:
    """Flops of block column k: Gram panel + left-looking update + potrf + trsm (for progress)."""
    def f(k):
        s = k * block
        w = min(block, n - s)
        m = n - s
        return gram_flops_per_entry * m * w + 2.0 * m * w * s + w ** 3 / 3 + (m - w) * w * w
    return f


def total_flops(n: int, block: int, gram_flops_per_entry: float = 0.0) -> float:
    f = factor_flops(n, block, gram_flops_per_entry)
    return sum(f(k) for k in range(-(-n // block)))


def pick_block(n: int, requested: int | None = None) -> int:
    if requested is not None:
        if requested < 1:
            raise ValueError(f"block_size must be >= 1, got {requested}")
        return int(min(requested, n))
    if n <= 512:
        return n
    if n <= 4096:
        return 512
    if n <= 16384:
        return 1024
    return 2048


def margin_text(lam_lb: float, c: float) -> str:
    return f"λ_min ≥ {lam_lb:.3e} (shift {c:.3e})" if math.isfinite(lam_lb) else "n/a"


def min_eig_estimate(store: PackedLower, iters: int = 25, seed: int = 0) -> float:
    """Estimate of λ_min(L Lᵀ) by inverse power iteration with the stored factor (not rigorous)."""
    n = store.n
    x = np.random.default_rng(seed).standard_normal(n)
    x /= np.linalg.norm(x)
    lam = None
    for _ in range(iters):
        y = store.solve_lower_t(store.solve_lower(x, n), n)
        ny = np.linalg.norm(y)
        if not np.isfinite(ny) or ny == 0:
            return 0.0
        new = 1.0 / ny
        x = y / ny
        if lam is not None and abs(new - lam) <= 1e-3 * new:
            lam = new
            break
        lam = new
    return float(lam)
