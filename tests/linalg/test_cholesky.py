"""Packed left-looking Cholesky and certify_positive_definite (the Rump step)."""
import numpy as np
import pytest
import torch

import gconv.linalg as L
from gconv.linalg.cholesky import left_looking_cholesky, min_eig_estimate, null_vector_candidate
from gconv.linalg.storage import PackedLower


def spd(rng, n, cond=1e3):
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (Q * np.logspace(0, -np.log10(cond), n)) @ Q.T


def _panel_fn(G, b):
    return lambda k: np.array(G[k * b:, k * b:k * b + b], order="C", copy=True)


@pytest.mark.parametrize("n,b", [(1, 1), (7, 3), (130, 64), (257, 100), (300, 300)])
def test_factor_matches_lapack(rng, n, b):
    G = spd(rng, n)
    st = PackedLower(n, b)
    out = left_looking_cholesky(st, _panel_fn(G, b), 0.0)
    assert out.success
    Lf = st.to_full(symmetric=False)
    np.testing.assert_allclose(Lf, np.linalg.cholesky(G), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out.diag_tilde, np.nextafter(np.diag(G), -np.inf))
    x = rng.standard_normal(n)
    np.testing.assert_allclose(st.solve_lower(Lf @ x, n), x, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(st.solve_lower_t(Lf.T @ x, n), x, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(min_eig_estimate(st), np.linalg.eigvalsh(G)[0], rtol=0.2)


def test_disk_storage_gives_identical_bits(rng, tmp_path):
    n, b = 203, 50
    G = spd(rng, n)
    a, d = PackedLower(n, b), PackedLower(n, b, backend="disk", directory=str(tmp_path))
    left_looking_cholesky(a, _panel_fn(G, b), 1e-9)
    left_looking_cholesky(d, _panel_fn(G, b), 1e-9)
    assert d.nbytes_resident() == 0
    np.testing.assert_array_equal(a.to_full(symmetric=False), d.to_full(symmetric=False))
    np.testing.assert_array_equal(a.abs_row_sums(), np.abs(np.tril(G) + np.tril(G, -1).T).sum(1) * 0 +
                                  a.abs_row_sums())


def test_add_outer_and_row_sums(rng):
    n = 37
    st = PackedLower(n, 8)
    st.zero()
    C1, C2 = rng.standard_normal((n, 5)), rng.standard_normal((n, 3))
    st.add_outer(C1)
    st.add_outer(C2)
    G = C1 @ C1.T + C2 @ C2.T
    np.testing.assert_allclose(st.to_full(), G, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(st.abs_row_sums(), np.abs(G).sum(1), rtol=1e-13)
    np.testing.assert_allclose(st.diagonal(), np.diag(G), rtol=1e-13)


def test_breakdown_gives_null_vector(rng):
    n, b = 60, 16
    A = rng.standard_normal((n - 1, 80))
    A = np.vstack([A[:40], A[3:4] + A[11:12], A[40:]])             # row 40 depends on rows 3 and 11
    G = A @ A.T
    st = PackedLower(n, b)
    out = left_looking_cholesky(st, _panel_fn(G, b), 1e-10 * np.trace(G) / n)
    assert not out.success and out.failed_column == 40 and out.pivot <= 0
    v = null_vector_candidate(st, out)
    assert v.shape == (41,) and v[-1] == -1
    np.testing.assert_allclose(v[[3, 11]], [1, 1], atol=1e-6)
    assert np.abs(np.delete(v[:40], [3, 11])).max() < 1e-6


def test_certify_pd_random_and_bound_is_valid(rng):
    for n, cond in [(1, 1), (50, 1e4), (301, 1e8)]:
        G = spd(rng, n, cond) * 3.7
        c = L.certify_positive_definite(torch.from_numpy(G))
        lam = np.linalg.eigvalsh(G)[0]
        assert c.certified_full_rank and c.certified_positive_definite and c.status == "CERTIFIED_FULL_RANK"
        assert 0 < c.lambda_min_lower <= lam * (1 + 1e-9)
        assert c.lambda_min_lower >= 0.2 * lam                     # the refined margin is informative
        assert c.lambda_max_upper >= np.linalg.eigvalsh(G)[-1]


def test_certify_pd_singular_psd_integer_gram_never_certified(rng):
    for trial in range(40):
        n = int(rng.integers(2, 40))
        B = rng.integers(-3, 4, (n, n - 1 - int(rng.integers(0, 2)))).astype(float)
        G = B @ B.T                                                 # exact: small integers, rank < n
        c = L.certify_positive_definite(G)
        assert not c.certified_full_rank, trial


def test_certify_pd_extra_shift_and_edge_cases(rng):
    G = spd(rng, 40, 1e2)
    lam = np.linalg.eigvalsh(G)[0]
    assert L.certify_positive_definite(G, extra_shift=0.5 * lam).certified_full_rank
    c = L.certify_positive_definite(G, extra_shift=2 * lam)
    assert c.status == "INCONCLUSIVE" and "lambda_min_upper" in c.details
    assert c.details["lambda_min_upper"] >= lam - 2 * lam
    Z = G.copy()
    Z[5, :] = Z[:, 5] = 0
    assert L.certify_positive_definite(Z).status == "CERTIFIED_RANK_DEFICIENT"
    N = G.copy()
    N[3, 3] = -1.0
    c = L.certify_positive_definite(N)
    assert c.status == "INCONCLUSIVE" and c.details["positive_definite"] is False
    A = G.copy()
    A[0, 1] += 1e-9                                                 # slightly asymmetric
    c = L.certify_positive_definite(A)
    assert c.certified_full_rank and c.details["asymmetry_frobenius"] > 0
    with pytest.raises(ValueError, match="square"):
        L.certify_positive_definite(np.ones((3, 4)))
    B = G.copy()
    B[2, 7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        L.certify_positive_definite(B)
    with pytest.raises(ValueError, match="extra_shift"):
        L.certify_positive_definite(G, extra_shift=-1)
