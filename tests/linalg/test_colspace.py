"""in_column_space: certified verdicts where a proof exists, honest INCONCLUSIVE otherwise."""
import numpy as np
import pytest
import torch
from scipy.sparse.linalg import LinearOperator

import gconv.linalg as L


def test_wide_full_row_rank_every_y_is_in(rng):
    A = rng.standard_normal((40, 90))
    r = L.in_column_space(A, rng.standard_normal(40))
    assert r.status == "IN_COLUMN_SPACE" and r.certified and r.method == "certified_full_row_rank"
    assert r.in_column_space and r.numerical_status == "IN_COLUMN_SPACE"
    # the alignment check's shape: vec(Y) given as an (n, m_y) array, J as a gconv implicit matrix
    kr = L.KhatriRao(rng.random((40, 2)) + 0.1, rng.standard_normal((40, 50)))
    assert L.in_column_space(kr, rng.standard_normal((20, 2))).status == "IN_COLUMN_SPACE"
    d = r.to_dict()
    assert d["status"] == "IN_COLUMN_SPACE" and "coefficients" not in d
    assert L.ColumnSpaceResult.from_json(r.to_json()).status == r.status


def test_tall_full_column_rank_in_and_out(rng):
    A = rng.standard_normal((120, 30))
    y_in = A @ rng.standard_normal(30)
    r = L.in_column_space(A, y_in)
    assert r.status == "INCONCLUSIVE" and r.numerical_status == "IN_COLUMN_SPACE"   # exact membership: no proof
    assert r.residual_bound is not None and r.residual_bound < 1e-10 * np.linalg.norm(y_in)
    r = L.in_column_space(A, y_in, rtol=1e-8)
    assert r.status == "IN_COLUMN_SPACE" and r.certified                            # within tolerance: proof
    y_out = y_in + rng.standard_normal(120)
    r = L.in_column_space(A, y_out)
    assert r.status == "NOT_IN_COLUMN_SPACE" and r.certified
    dist = np.linalg.norm(y_out - A @ np.linalg.lstsq(A, y_out, rcond=None)[0])
    assert 0 < r.distance_lower <= dist <= r.residual_bound
    r = L.in_column_space(A, y_in + 1e-3 * rng.standard_normal(120), rtol=1e-1)
    assert r.status == "IN_COLUMN_SPACE"


def test_rank_deficient_wide_is_inconclusive_with_numbers(rng):
    A = rng.standard_normal((30, 10)) @ rng.standard_normal((10, 60))               # rank 10 < 30 rows
    r = L.in_column_space(A, A @ rng.standard_normal(60))
    assert r.status == "INCONCLUSIVE" and r.numerical_status == "IN_COLUMN_SPACE"
    assert r.details["row_rank_certificate"]["status"] != "CERTIFIED_FULL_RANK"
    r = L.in_column_space(A, rng.standard_normal(30))
    assert r.status == "INCONCLUSIVE" and r.numerical_status == "NOT_IN_COLUMN_SPACE"
    assert r.relative_residual > 0.1


def test_matrix_free_operators(rng):
    A = rng.standard_normal((80, 25))
    y = A @ rng.standard_normal(25)
    op = LinearOperator(A.shape, matvec=lambda x: A @ x, rmatvec=lambda v: A.T @ v)
    r = L.in_column_space(op, y, max_bytes=100)
    assert r.method == "lsmr" and r.numerical_status == "IN_COLUMN_SPACE" and r.residual_bound is None

    class TorchOp:                                      # like gconv.jacobian.Jacobian: mv / rmv on tensors
        shape = A.shape
        dtype = torch.float64

        def mv(self, v):
            assert isinstance(v, torch.Tensor)
            return torch.from_numpy(A) @ v

        def rmv(self, u):
            assert isinstance(u, torch.Tensor)
            return torch.from_numpy(A).T @ u
    r = L.in_column_space(TorchOp(), torch.from_numpy(y + rng.standard_normal(80)), max_bytes=100)
    assert r.method == "lsmr" and r.numerical_status == "NOT_IN_COLUMN_SPACE"
    r = L.in_column_space(TorchOp(), torch.from_numpy(y))               # small: materialised via Aᵀe_i
    assert r.numerical_status == "IN_COLUMN_SPACE"


def test_bad_inputs(rng):
    A = rng.standard_normal((10, 20))
    with pytest.raises(ValueError, match="entries"):
        L.in_column_space(A, np.ones(11))
    with pytest.raises(ValueError, match="NaN"):
        L.in_column_space(A, np.full(10, np.nan))
    r = L.in_column_space(A, np.zeros(10))
    assert r.status == "IN_COLUMN_SPACE" and r.method == "trivial"
