"""Realistic, ill-conditioned inputs: real digit images through a random softplus(100) conv net
(tests/linalg/conftest.py), in the two shapes of the papers."""
import numpy as np
import pytest

import gconv.linalg as L
from conftest import expressivity_factors, safe_exploration_factors


@pytest.mark.slow
def test_safe_exploration_shape_is_certified_and_agrees_with_numpy():
    S, Z = safe_exploration_factors(1000)                     # m_{H−1} = 513, m_H = ⌈2n/513⌉ = 4
    phi = L.KhatriRao(S, Z)
    dense = phi.to_dense()
    sv = np.linalg.svd(dense, compute_uv=False)
    assert np.linalg.matrix_rank(dense) == 1000 and sv[-1] / sv[0] < 1e-4     # ill-conditioned, full rank
    c = L.certify_full_row_rank(phi, progress=False)
    assert c.status == "CERTIFIED_FULL_RANK" and c.rank == 1000
    assert 0 < c.sigma_min_lower <= sv[-1] and c.sigma_max_upper >= sv[0]
    assert c.details["whiten_Z"]["whitening"] != "off"
    # whitening lifts the margin of the Gram route (design notes §3(b))
    raw = L.certify_full_row_rank(phi, whiten=False, method="gram", progress=False)
    wh = c
    lam = {k: next(m for m in x.methods if m.method == "margin_refinement").details["lambda_min_lower_scaled"]
           for k, x in (("raw", raw), ("whitened", wh)) if x.certified_full_rank}
    assert wh.certified_full_rank
    if raw.certified_full_rank:
        assert lam["whitened"] > 1e3 * lam["raw"], lam       # refined λ_min bounds of the two scaled Grams


@pytest.mark.slow
def test_expressivity_shape_needs_the_qr_route():
    Zb, W, b = expressivity_factors(200)                      # width ⌈1.1 n⌉ = 220, [h_X, 1]
    af = L.ActivatedFeatures(Zb, W, b, "softplus")
    H = af.to_dense()
    sv = np.linalg.svd(H, compute_uv=False)
    assert np.linalg.matrix_rank(H) == 200 and sv[-1] / sv[0] < 1e-9          # κ ≈ 1e11: the Gram squares it
    c = L.certify_full_row_rank(af, progress=False)
    steps = [(m.method, m.outcome) for m in c.methods]
    assert ("gram_cholesky", "breakdown") in steps and ("qr_preconditioned_gram", "certified") in steps
    assert c.status == "CERTIFIED_FULL_RANK" and 0.5 * sv[-1] <= c.sigma_min_lower <= sv[-1]


@pytest.mark.slow
def test_numerically_deficient_features_are_inconclusive_with_a_rigorous_bound():
    Zb, W, b = expressivity_factors(400)                      # numpy says rank < 400 here
    af = L.ActivatedFeatures(Zb, W, b, "softplus")
    H = af.to_dense()
    sv = np.linalg.svd(H, compute_uv=False)
    assert np.linalg.matrix_rank(H) < 400
    c = L.certify_full_row_rank(af, progress=False)
    assert c.status == "INCONCLUSIVE"
    assert sv[-1] <= c.details["sigma_min_upper"] <= 1e-10 * sv[0]
