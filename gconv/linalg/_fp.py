"""Rigorous floating-point bookkeeping for the certificates (docs/certification.md §1).

Python and NumPy cannot switch the rounding mode, so every bound that a certificate relies on is
obtained in one of two ways:

* **scalars** (shifts, margins, norms of the whole problem) are evaluated in exact rational
  arithmetic (:class:`fractions.Fraction` over the binary64 inputs) and rounded outward at the very
  end (:func:`round_up`, :func:`round_down`, :func:`sqrt_up`, :func:`sqrt_down`);
* **vectors** (row norms, |A||x| products) are computed in binary64 and then *inflated*
  (:func:`inflate_up`) by a factor and an additive term that provably cover the rounding and
  underflow errors of the k operations that produced them.

Error model (IEEE 754 binary64, round to nearest, FMA allowed): fl(x ∘ y) = (x ∘ y)(1 + δ) + ε with
|δ| ≤ u = 2⁻⁵³, |ε| ≤ η/2 for × and / (η = 2⁻¹⁰⁷⁴, the smallest subnormal), ε = 0 for ± and √.
γ_k = k·u / (1 − k·u) (Higham, *Accuracy and Stability*, §3.1).
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

U = 2.0 ** -53            # unit roundoff of binary64
ETA = 2.0 ** -1074        # smallest positive subnormal
_U_FR = Fraction(1, 2 ** 53)
_ETA_FR = Fraction(1, 2 ** 1074)


def gamma(k: int) -> Fraction:
    """γ_k = k u / (1 − k u), exactly."""
    k = int(k)
    if k < 0 or k * 2 >= 2 ** 53:
        raise ValueError(f"gamma({k}) is out of range")
    return Fraction(k, 2 ** 53 - k)


def fr(x) -> Fraction:
    """The exact rational value of a binary64 number (or an int / Fraction)."""
    if isinstance(x, Fraction):
        return x
    if isinstance(x, (int, np.integer)):
        return Fraction(int(x))
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"non-finite value {x!r} in an exact computation")
    return Fraction(x)


def round_up(q) -> float:
    """The smallest binary64 number ≥ q (inf if q is beyond the range)."""
    q = fr(q)
    try:
        f = float(q)
    except OverflowError:
        return math.inf if q > 0 else -np.finfo(float).max
    if Fraction(f) < q:
        f = math.nextafter(f, math.inf)
    return f


def round_down(q) -> float:
    """The largest binary64 number ≤ q."""
    q = fr(q)
    try:
        f = float(q)
    except OverflowError:
        return np.finfo(float).max if q > 0 else -math.inf
    if Fraction(f) > q:
        f = math.nextafter(f, -math.inf)
    return f


def _isqrt_frac(q: Fraction, up: bool) -> Fraction:
    """√q bracketed by rationals: ⌊√(p·d)⌋/d ≤ √(p/d) ≤ (⌊√(p·d)⌋ + 1)/d."""
    p, d = q.numerator, q.denominator
    r = math.isqrt(p * d)
    return Fraction(r + (1 if up else 0), d)


def sqrt_up(q) -> float:
    """A binary64 number s with s ≥ √q (q ≥ 0)."""
    q = fr(q)
    if q <= 0:
        return 0.0
    if round_up(q) == math.inf:
        return round_up(_isqrt_frac(q, True))
    s = math.sqrt(round_up(q))
    while Fraction(s) ** 2 < q:
        s = math.nextafter(s, math.inf)
    return s


def sqrt_down(q) -> float:
    """A binary64 number s with 0 ≤ s ≤ √q (0 when q ≤ 0)."""
    q = fr(q)
    if q <= 0:
        return 0.0
    if round_up(q) == math.inf:
        return round_down(_isqrt_frac(q, False))
    s = math.sqrt(round_down(q))
    while s > 0 and Fraction(s) ** 2 > q:
        s = math.nextafter(s, 0.0)
    return s


# ---------------------------------------------------------------- exact sums of many binary64 numbers
def exact_sum(x, weights=None, exponents=None) -> Fraction:
    """Σ_i w_i · x_i · 2^{e_i} exactly (x binary64, w and e integers)."""
    x = np.ascontiguousarray(x, dtype=np.float64).ravel()
    if x.size == 0:
        return Fraction(0)
    if not np.all(np.isfinite(x)):
        raise ValueError("non-finite value in an exact sum")
    m, e = np.frexp(x)
    m = (m * 2.0 ** 53).astype(np.int64)
    e = e.astype(np.int64) - 53
    if exponents is not None:
        e = e + np.asarray(exponents, dtype=np.int64).ravel()
    nz = m != 0
    if not nz.any():
        return Fraction(0)
    m, e = m[nz], e[nz]
    w = None if weights is None else np.asarray(weights, dtype=np.int64).ravel()[nz]
    emin = int(e.min())
    sh = (e - emin).tolist()
    mm = m.tolist()
    if w is None:
        total = sum(mi << si for mi, si in zip(mm, sh))
    else:
        total = sum(int(wi) * mi << si for wi, mi, si in zip(w.tolist(), mm, sh))
    return Fraction(total) * (Fraction(2) ** emin)


# ---------------------------------------------------------------- vector upper bounds
def inflate_up(x, k: int, n_abs: int = 0) -> np.ndarray:
    """Elementwise y ≥ (x + n_abs·η) / (1 − γ_k), for x ≥ 0 computed in binary64.

    Use it when the exact quantity q ≥ 0 satisfies x ≥ (1 − γ_k)·q − n_abs·η, i.e. x came from
    non-negative terms through at most k rounded operations with at most n_abs underflows each
    contributing η (e.g. a sum of k products of non-negative numbers).  The two operations that
    compute y are themselves covered: y = fl(fl(x·f) + a) with f ≥ 1/((1−γ_k)(1−u)²) and
    a ≥ η + n_abs·η / ((1−γ_k)(1−u)).
    """
    x = np.asarray(x, dtype=np.float64)
    one_minus_u = 1 - _U_FR
    f = round_up(1 / ((1 - gamma(k)) * one_minus_u ** 2))
    a = round_up(_ETA_FR + n_abs * _ETA_FR / ((1 - gamma(k)) * one_minus_u))
    return x * f + a


def sum_up(x) -> Fraction:
    """An upper bound (exact rational) of the exact sum of the non-negative binary64 entries of x."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size == 0:
        return Fraction(0)
    if (x < 0).any():
        raise ValueError("sum_up needs non-negative entries")
    s = float(np.sum(x))
    if not math.isfinite(s):
        return Fraction(10) ** 400  # effectively +inf, still a valid upper bound
    return fr(s) / (1 - gamma(max(x.size - 1, 1)))


def sumsq_rows_up(A) -> np.ndarray:
    """Upper bounds on the squared Euclidean norm of each row of A (binary64, 2-D)."""
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2:
        raise ValueError("sumsq_rows_up needs a 2-D array")
    D = max(A.shape[1], 1)
    with np.errstate(over="ignore"):
        r = np.einsum("ij,ij->i", A, A)
    return inflate_up(r, D, D)


def mul_up(x, y) -> np.ndarray:
    """Elementwise upper bounds on x·y for non-negative upper bounds x, y."""
    with np.errstate(over="ignore"):
        return inflate_up(np.asarray(x, dtype=np.float64) * np.asarray(y, dtype=np.float64), 1, 1)


def sqrt_vec_up(x) -> np.ndarray:
    """Elementwise upper bounds on √x (x ≥ 0)."""
    return inflate_up(np.sqrt(np.asarray(x, dtype=np.float64)), 1, 0)


def matmul_abs_up(A, B) -> np.ndarray:
    """Entrywise upper bounds on |A|·|B| (binary64 2-D or 1-D operands)."""
    A = np.abs(np.asarray(A, dtype=np.float64))
    B = np.abs(np.asarray(B, dtype=np.float64))
    k = A.shape[-1]
    with np.errstate(over="ignore"):
        if A.ndim == 2 and B.ndim == 2:
            from gconv.linalg._blas import mm
            P = mm(A, B)
        else:
            P = A @ B
    return inflate_up(P, k, k)


def frob_sq_up(A) -> Fraction:
    """Upper bound on ‖A‖_F² (exact rational)."""
    return sum_up(sumsq_rows_up(np.atleast_2d(A)))


def pow2_exponent(x) -> np.ndarray:
    """e with 2^(e−1) ≤ |x| < 2^e for x ≠ 0 (0 for x = 0), elementwise (np.frexp)."""
    return np.frexp(np.asarray(x, dtype=np.float64))[1].astype(np.int64)


def spectral_norm_upper(M, *, iters: int = 60) -> "Fraction":
    """A rigorous upper bound on ‖M‖₂: λ_max(MᵀM) ≤ c proven by certifying c·I − fl(MᵀM) positive
    definite (the Rump step, with the Gram formation error as the extra shift), c a little above a
    power-iteration estimate; falls back to the Frobenius norm when that fails.  O(m³) for m = min dim."""
    M = np.asarray(M, dtype=np.float64)
    frob = frob_sq_up(M)
    if M.size == 0 or frob == 0:
        return Fraction(0)
    from gconv.linalg._blas import mm
    from gconv.linalg.positive_definite import certify_positive_definite
    Mt = np.ascontiguousarray(M.T)
    G = mm(Mt, M) if M.shape[0] >= M.shape[1] else mm(M, Mt)
    k = max(M.shape)
    x = np.random.default_rng(0).standard_normal(G.shape[0])
    lam = 0.0
    for _ in range(iters):
        y = G @ x
        ny = float(np.linalg.norm(y))
        if ny == 0 or not np.isfinite(ny):
            break
        lam_new = float(x @ y) / float(x @ x)
        x = y / ny
        if abs(lam_new - lam) <= 1e-6 * lam_new:
            lam = lam_new
            break
        lam = lam_new
    err = gamma(k) * frob + k * G.shape[0] * Fraction(1, 2 ** 1074)   # ‖fl(MᵀM) − MᵀM‖₂ ≤ γ_k ‖M‖_F²
    for factor in (Fraction(65, 64), Fraction(9, 8)):
        c = fr(round_up(fr(lam) * factor + 4 * err))
        if c <= 0:
            break
        cand = np.diag(np.full(G.shape[0], float(c))) - G
        if not np.isfinite(cand).all():
            break
        cert = certify_positive_definite(cand, extra_shift=round_up(err + gamma(1) * c), tighten_margin=False)
        if cert.certified_full_rank:
            return min(fr(sqrt_up(c)), fr(sqrt_up(frob)))
    return fr(sqrt_up(frob))
