"""matrix_rank: exact parity with numpy.linalg.matrix_rank on anything it can hold."""
import numpy as np
import pytest
import torch

import gconv.linalg as L


def planted_rank(rng, m, n, r, decay=1e-3, dtype=np.float64):
    U, _ = np.linalg.qr(rng.standard_normal((m, max(r, 1))))
    V, _ = np.linalg.qr(rng.standard_normal((n, max(r, 1))))
    s = np.logspace(0, np.log10(decay), max(r, 1)) if r else np.zeros(1)
    return ((U * s) @ V.T).astype(dtype)


@pytest.mark.parametrize("shape,r", [((1, 1), 1), ((5, 3), 2), ((40, 70), 25), ((90, 60), 60), ((33, 33), 0)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_parity_planted_ranks(rng, shape, r, dtype):
    A = planted_rank(rng, *shape, r, dtype=dtype)
    assert L.matrix_rank(A) == np.linalg.matrix_rank(A)
    assert L.matrix_rank(torch.from_numpy(A)) == np.linalg.matrix_rank(A)
    for tol in (None, 1e-2, 0.0):
        assert L.matrix_rank(A, tol=tol) == np.linalg.matrix_rank(A, tol=tol)
    for rtol in (1e-6, 0.5):
        assert L.matrix_rank(A, rtol=rtol) == np.linalg.matrix_rank(A, rtol=rtol)


def test_parity_near_threshold_hermitian_and_stacks(rng):
    # singular values straddling the default threshold S.max()·max(M,N)·eps
    U, _ = np.linalg.qr(rng.standard_normal((50, 50)))
    s = np.ones(50)
    s[-5:] = 50 * np.finfo(float).eps * np.array([0.5, 0.9, 1.1, 2.0, 10.0])
    A = (U * s) @ U.T
    assert L.matrix_rank(A) == np.linalg.matrix_rank(A)
    assert L.matrix_rank(A, hermitian=True) == np.linalg.matrix_rank(A, hermitian=True)
    St = np.stack([planted_rank(rng, 20, 30, r) for r in (3, 10, 20)])
    np.testing.assert_array_equal(L.matrix_rank(St), np.linalg.matrix_rank(St))
    np.testing.assert_array_equal(L.matrix_rank(torch.from_numpy(St)), np.linalg.matrix_rank(St))
    with pytest.raises(ValueError):
        L.matrix_rank(A, tol=1e-3, rtol=1e-3)
    assert L.matrix_rank(torch.from_numpy(A).to(torch.bfloat16)) == \
        np.linalg.matrix_rank(torch.from_numpy(A).to(torch.bfloat16).float().numpy())


def test_parity_on_implicit_matrices(rng):
    S, Z = rng.random((60, 2)), rng.standard_normal((60, 40))
    S[:, 1] = S[:, 0]                                            # rank(φ) ≤ rank(S)·rank(Z) = 40
    kr = L.KhatriRao(S, Z)
    assert L.matrix_rank(kr) == np.linalg.matrix_rank(kr.to_dense()) == 40
    Zb, W = rng.standard_normal((30, 4)), rng.standard_normal((4, 50))
    af = L.ActivatedFeatures(Zb, W, None, "relu")
    assert L.matrix_rank(af) == np.linalg.matrix_rank(af.to_dense())


def test_streaming_beyond_max_bytes(rng):
    A = rng.standard_normal((120, 200))
    kr = L.KhatriRao(rng.random((120, 3)), rng.standard_normal((120, 70)))
    assert L.matrix_rank(L.RowBlocks(lambda s, e: A[s:e], n=120), max_bytes=1000, progress=False) == 120
    assert L.matrix_rank(kr, max_bytes=1000, progress=False) == 120
    B = A.copy()
    B[5] = B[6]
    with pytest.raises(RuntimeError, match="CERTIFIED_RANK_DEFICIENT"):
        L.matrix_rank(L.RowBlocks(lambda s, e: B[s:e], n=120), max_bytes=1000, progress=False)


@pytest.mark.slow
def test_parity_2000_by_4000(rng):
    A = rng.standard_normal((2000, 1900)) @ rng.standard_normal((1900, 4000))     # rank 1,900
    ref = np.linalg.matrix_rank(A)
    assert ref == 1900 and L.matrix_rank(A) == ref
