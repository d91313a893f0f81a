"""Implicit matrices against their explicit float64 references."""
import numpy as np
import pytest
import torch
from scipy.sparse.linalg import LinearOperator

import gconv.linalg as L
from gconv.linalg.gram import KhatriRaoGram, RowsGram, row_prepass


def explicit_phi(S, Z):
    """Row i = s_i ⊗ z_i, built entry by entry (seed 000, φ of Assumption 4)."""
    n, mS, mZ = S.shape[0], S.shape[1], Z.shape[1]
    phi = np.empty((n, mS * mZ))
    for k in range(mS):
        phi[:, k * mZ:(k + 1) * mZ] = S[:, k:k + 1] * Z
    return phi


@pytest.mark.parametrize("n,mS,mZ", [(1, 1, 1), (37, 3, 11), (64, 5, 129)])
def test_khatri_rao_rows_products_and_gram_identity(rng, n, mS, mZ):
    S, Z = rng.random((n, mS)), rng.standard_normal((n, mZ))
    kr = L.KhatriRao(torch.from_numpy(S), Z)           # mixed torch / numpy inputs
    phi = explicit_phi(S, Z)
    assert kr.shape == (n, mS * mZ)
    np.testing.assert_array_equal(kr.to_dense(), phi)
    x, y = rng.standard_normal(mS * mZ), rng.standard_normal(n)
    np.testing.assert_allclose(kr.matvec(x), phi @ x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(kr.rmatvec(y), phi.T @ y, rtol=1e-12, atol=1e-12)
    X, Y = rng.standard_normal((mS * mZ, 3)), rng.standard_normal((n, 2))
    np.testing.assert_allclose(kr.matvec(X), phi @ X, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(kr.rmatvec(Y), phi.T @ Y, rtol=1e-12, atol=1e-12)
    assert isinstance(kr.matvec(torch.from_numpy(x)), torch.Tensor)
    # |φ| products are rigorous upper bounds
    ax = np.abs(x)
    assert np.all(kr.abs_matvec(ax) >= np.abs(phi) @ ax)
    assert np.all(kr.abs_rmatvec(np.abs(y)) >= np.abs(phi).T @ np.abs(y))
    # Gram identity φφᵀ = (SSᵀ) ∘ (ZZᵀ), also through the (unwhitened, unscaled-back) engine panels
    np.testing.assert_allclose((S @ S.T) * (Z @ Z.T), phi @ phi.T, rtol=1e-12, atol=1e-12)
    eng = KhatriRaoGram(kr, whiten=False)
    panel = eng.panel(0, n)
    D = np.ldexp(1.0, eng.exps)
    ref = (D[:, None] * phi) @ (D[:, None] * phi).T
    np.testing.assert_allclose(np.tril(panel), np.tril(ref), rtol=1e-12, atol=1e-13)
    # the formation-error bound covers the actual error (computed against exact rationals on a few entries)
    from fractions import Fraction
    Xs, Ys = eng.X, eng.Y
    err = 0.0
    for i, j in [(0, 0), (n - 1, 0), (n // 2, n // 3)]:
        ex = sum(Fraction(float(a)) * Fraction(float(b)) for a, b in zip(Xs[i], Xs[j])) * \
            sum(Fraction(float(a)) * Fraction(float(b)) for a, b in zip(Ys[i], Ys[j]))
        err = max(err, abs(float(Fraction(float(panel[max(i, j) - 0, min(i, j)])) - ex)))
    assert err <= float(eng.eps_form)


def test_khatri_rao_column_blocks(rng):
    S, Z = rng.random((9, 3)), rng.standard_normal((9, 4))
    kr = L.KhatriRao(S, Z)
    phi = explicit_phi(S, Z)
    np.testing.assert_array_equal(kr.column_block(2, 9), phi[:, 2:9])
    np.testing.assert_array_equal(kr.column_groups(1, 3), phi[:, 4:12])


def test_khatri_rao_bad_inputs():
    with pytest.raises(ValueError, match="same number of rows"):
        L.KhatriRao(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="2-D"):
        L.KhatriRao(np.ones(3), np.ones((3, 2)))
    with pytest.raises(TypeError):
        L.KhatriRao([[1.0]], np.ones((1, 1)))


@pytest.mark.parametrize("act", ["softplus", "relu", "tanh", torch.sigmoid])
def test_activated_features_rows(rng, act):
    n, m, w = 45, 7, 13
    Z, W, b = rng.standard_normal((n, m)), rng.standard_normal((m, w)), rng.standard_normal(w)
    af = L.ActivatedFeatures(torch.from_numpy(Z).float(), W, b, act, block_rows=16)
    pre = torch.from_numpy(Z.astype(np.float32).astype(np.float64) @ W + b)
    ref = {"softplus": lambda t: torch.clamp_min(t, 0) + torch.log1p(torch.exp(-(100 * t).abs())) / 100,
           "relu": torch.relu, "tanh": torch.tanh}.get(act, act)(pre).numpy()
    H = af.to_dense()
    assert af.shape == (n, w + 1) and af.source_dtype == "float32"
    np.testing.assert_allclose(H[:, :w], ref, rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(H[:, w], 1.0)
    np.testing.assert_array_equal(af.rows(10, 40), H[10:40])     # blocks cross canonical boundaries
    x = rng.standard_normal(w + 1)
    np.testing.assert_allclose(af.matvec(x), H @ x, rtol=1e-12)
    np.testing.assert_array_equal(af.column_block(3, w + 1), H[:, 3:])
    af2 = L.ActivatedFeatures(Z, W, None, "identity", append_ones=False)
    np.testing.assert_allclose(af2.to_dense(), Z @ W, rtol=1e-13)


def test_activated_features_errors(rng):
    with pytest.raises(ValueError, match="Z.shape\\[1\\] == W.shape\\[0\\]"):
        L.ActivatedFeatures(np.ones((3, 2)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="b has shape"):
        L.ActivatedFeatures(np.ones((3, 2)), np.ones((2, 4)), np.ones(5))
    with pytest.raises(ValueError, match="unknown activation"):
        L.ActivatedFeatures(np.ones((3, 2)), np.ones((2, 4)), None, "swishy")
    calls = {"k": 0}

    def flaky(t):
        calls["k"] += 1
        return t + calls["k"] * 1e-12                    # different bits on every evaluation
    af = L.ActivatedFeatures(rng.standard_normal((5, 2)), rng.standard_normal((2, 3)), None, flaky)
    af.rows(0, 5)
    with pytest.raises(RuntimeError, match="not deterministic"):
        af.rows(0, 5)


def _variants(A):
    n, D = A.shape
    class JacobianLike:                                  # gconv.jacobian.Jacobian exposes row_blocks()
        shape = (n, D)

        def row_blocks(self):
            return [torch.from_numpy(A[i:i + 13]) for i in range(0, n, 13)]
    yield "callable", L.RowBlocks(lambda s, e: A[s:e], n=n)
    yield "list", L.RowBlocks([A[i:i + 11] for i in range(0, n, 11)])
    yield "factory", L.RowBlocks(lambda: (A[i:i + 7] for i in range(0, n, 7)))
    yield "generator", L.RowBlocks((torch.from_numpy(A[i:i + 9]) for i in range(0, n, 9)), n=n, D=D)
    yield "row_blocks_object", L.as_implicit(JacobianLike())
    yield "linear_operator", L.as_implicit(LinearOperator((n, D), matvec=lambda x: A @ x, rmatvec=lambda y: A.T @ y))


def test_row_blocks_variants_agree(rng):
    A = rng.standard_normal((40, 23))
    for name, rb in _variants(A):
        assert rb.shape == (40, 23), name
        if name == "generator":
            from gconv.linalg.gram import RowStore
            rb.materialise(RowStore(40, 23))
        np.testing.assert_allclose(rb.to_dense(), A, rtol=0, atol=0, err_msg=name)
        np.testing.assert_allclose(rb.rows(5, 31), A[5:31], rtol=0, atol=0, err_msg=name)
        x = rng.standard_normal(23)
        np.testing.assert_allclose(rb.matvec(x), A @ x, rtol=1e-12, err_msg=name)


def test_row_blocks_errors(rng):
    A = rng.standard_normal((10, 4))
    with pytest.raises(ValueError, match="needs n"):
        L.RowBlocks(lambda s, e: A[s:e])
    bad = L.RowBlocks([A[:5], A[5:, :3]])
    with pytest.raises(ValueError, match="columns"):
        bad.to_dense()
    state = {"k": 0}

    def changing(s, e):
        state["k"] += 1
        return A[s:e] * (1 + state["k"] * 1e-15)
    rb = L.RowBlocks(changing, n=10, block_rows=10)
    rb.rows(0, 10)
    with pytest.raises(RuntimeError, match="different numbers"):
        rb.rows(0, 10)
    with pytest.raises(TypeError):
        L.as_implicit("not a matrix")


def test_prepass_finds_zero_and_identical_rows_and_names_bad_block(rng):
    A = rng.standard_normal((30, 6))
    A[4] = 0.0
    A[20] = A[7]
    A[21] = -0.0 * A[7] + A[7]                          # equal as real vectors
    st = row_prepass(L.DenseMatrix(A))
    assert st.zero_rows == [4]
    assert (7, 20, "1") in st.duplicates and (7, 21, "1") in st.duplicates
    A[25, 3] = np.inf
    src = L.RowBlocks(lambda s, e: A[s:e], n=30, block_rows=8)
    with pytest.raises(ValueError, match=r"rows 24–29 contains Inf \(first at row 25, column 3\)"):
        row_prepass(src)
    eng = RowsGram(L.DenseMatrix(A[:20]), row_prepass(L.DenseMatrix(A[:20])))
    assert eng.panel(0, 20).shape == (20, 20)
