"""The rigorous floating-point toolkit: every bound is checked against exact rational arithmetic."""
import math
from fractions import Fraction

import numpy as np
import pytest

from gconv.linalg import _fp
from gconv.linalg.cholesky import rump_rho
from gconv.linalg.gram import row_exponents, scale_rows


def test_gamma_and_rounding_are_exact():
    assert _fp.gamma(1) == Fraction(1, 2 ** 53 - 1)
    for q in (Fraction(1, 3), Fraction(-7, 10), Fraction(2) ** -1074 / 3, Fraction(10) ** 300 / 7):
        up, dn = _fp.round_up(q), _fp.round_down(q)
        assert Fraction(dn) <= q <= Fraction(up)
        assert math.nextafter(dn, math.inf) >= up  # adjacent (or equal)
    assert _fp.round_up(Fraction(10) ** 400) == math.inf
    for q in (Fraction(2), Fraction(1, 3), Fraction(10) ** -300, Fraction(123456789, 7)):
        assert Fraction(_fp.sqrt_down(q)) ** 2 <= q <= Fraction(_fp.sqrt_up(q)) ** 2
    assert _fp.sqrt_down(Fraction(-1)) == 0.0


def test_exact_sum_matches_fractions(rng):
    x = rng.standard_normal(500) * np.exp2(rng.integers(-900, 900, 500).astype(float))
    w = rng.integers(-5, 6, 500)
    e = rng.integers(-50, 50, 500)
    ref = sum(Fraction(float(a)) * int(b) * Fraction(2) ** int(c) for a, b, c in zip(x, w, e))
    assert _fp.exact_sum(x, weights=w, exponents=e) == ref
    assert _fp.exact_sum(np.zeros(3)) == 0


@pytest.mark.parametrize("scale", [1.0, 1e-300, 1e300])
def test_vector_upper_bounds_dominate_exact_values(rng, scale):
    A = rng.standard_normal((7, 33)) * scale
    A[0, :5] = 5e-324  # subnormal entries whose squares underflow
    ub = _fp.sumsq_rows_up(A)
    for i in range(A.shape[0]):
        exact = sum(Fraction(float(a)) ** 2 for a in A[i])
        assert math.isinf(ub[i]) or Fraction(float(ub[i])) >= exact
    B = np.abs(rng.standard_normal((33, 4)))
    P = _fp.matmul_abs_up(A, B)
    for i in range(3):
        for j in range(4):
            exact = sum(abs(Fraction(float(A[i, k]))) * Fraction(float(B[k, j])) for k in range(33))
            assert math.isinf(P[i, j]) or Fraction(float(P[i, j])) >= exact
    s = _fp.sum_up(np.abs(A).ravel())
    assert s >= sum(abs(Fraction(float(a))) for a in A.ravel())


def test_row_exponents_scale_exactly(rng):
    A = rng.standard_normal((40, 17)) * np.exp2(rng.integers(-1000, 1000, (40, 1)).astype(float))
    A[3] = 5e-324 * rng.integers(1, 9, 17)           # a row of subnormals
    A[4, 0], A[4, 1:] = 1e300, 1e-300                  # a row with a huge dynamic range
    A[5] = 0.0
    e = row_exponents(A)
    S = scale_rows(A, e)
    assert np.array_equal(scale_rows(S, -e), A)        # scaling was exact (bitwise reversible)
    norms = np.linalg.norm(S, axis=1)
    ok = (A != 0).any(axis=1) & (np.arange(40) != 4)
    assert np.all((norms[ok] > 0.5) & (norms[ok] < 2.0))


def test_rump_rho_formula(rng):
    d = rng.random(50) + 0.5
    u, eta = Fraction(1, 2 ** 53), Fraction(1, 2 ** 1074)
    exact = sum((_fp.gamma(j + 3) / (1 - _fp.gamma(j + 3))) * Fraction(float(d[j - 1])) for j in range(1, 51))
    rho = rump_rho(d)
    assert rho >= exact + 8 * 50 * (50 + 2 + Fraction(float(d.max()))) * eta
    assert rho <= exact * (1 + Fraction(1, 10 ** 6)) + 8 * 50 * (52 + Fraction(float(d.max()))) * eta
    with pytest.raises(ValueError):
        rump_rho(np.array([1.0, -1.0]))


def test_spectral_norm_upper_is_rigorous_and_tight(rng):
    M = rng.standard_normal((60, 40)) @ np.diag(np.logspace(0, -8, 40))
    s = np.linalg.svd(M, compute_uv=False)[0]
    ub = _fp.spectral_norm_upper(M)
    assert float(ub) >= s and float(ub) <= 1.01 * s
