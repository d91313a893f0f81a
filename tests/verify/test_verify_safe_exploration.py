import math

import numpy as np
import pytest
import torch

import gconv.verify as V
from gconv.verify import Verdict


def _explicit_phi(Z, q):
    S = torch.sigmoid(Z @ q)
    return (S[:, :, None] * Z[:, None, :]).reshape(Z.shape[0], -1)


def test_verified_on_digits_with_table2_width(digits, small_resnet):
    rep = V.safe_exploration(small_resnet, digits, seed=3, progress=False)
    assert rep.verdict is Verdict.VERIFIED and rep.verified
    n = digits.n
    m_prev = small_resnet.feature_dim + 1
    assert rep.inputs["m_H"] == math.ceil(2 * n / m_prev) and rep.inputs["m_H_minus_1"] == m_prev
    assert rep.inputs["matrix_shape"] == [n, rep.inputs["m_H"] * m_prev]
    assert rep.certificate["status"] == "CERTIFIED_FULL_RANK"
    assert rep.margin > 0 and rep.margin == rep.certificate["sigma_min_lower"]
    assert {"features", "total"} <= set(rep.timings)
    assert rep.environment["torch"] == torch.__version__
    # float64 reference: the explicit φ has numerical rank n and σ_min above the certified bound
    Z = torch.cat([small_resnet.eval().features(digits.X).detach().double(), torch.ones(n, 1, dtype=torch.float64)], 1)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(m_prev, rep.inputs["m_H"], generator=g, dtype=torch.float64)
    s = np.linalg.svd(_explicit_phi(Z, q).numpy(), compute_uv=False)
    assert np.linalg.matrix_rank(_explicit_phi(Z, q).numpy()) == n
    assert s[-1] >= rep.margin * (1 - 1e-6)


def test_features_given_directly_match_the_model_path(digits, small_resnet):
    Zbar = small_resnet.eval().features(digits.X).detach()
    a = V.safe_exploration(small_resnet, digits, seed=5, progress=False)
    b = V.safe_exploration(Zbar, seed=5, progress=False)
    assert a.verdict is b.verdict is Verdict.VERIFIED
    assert a.certificate["sigma_min_lower"] == pytest.approx(b.certificate["sigma_min_lower"], rel=1e-6)
    assert b.inputs["model"] == "features given"


def test_duplicated_inputs_do_not_verify(digits, small_resnet):
    X = torch.cat([digits.X[:40], digits.X[:40]])
    rep = V.safe_exploration(small_resnet, X, progress=False)
    assert rep.verdict is Verdict.NOT_VERIFIED
    assert rep.certificate["status"] == "CERTIFIED_RANK_DEFICIENT"
    assert rep.margin is None


def test_too_narrow_ee_layer_does_not_verify(digits, small_resnet):
    # m_H·m_{H−1} = 1·65 < n = 150: rank φ ≤ 65 < n
    rep = V.safe_exploration(small_resnet, digits, m_H=1, progress=False)
    assert rep.verdict is Verdict.NOT_VERIFIED
    assert "rows >" in rep.certificate["reason"] or rep.certificate["details"]


def test_given_q_and_its_checks():
    Z = torch.randn(30, 7, dtype=torch.float64)
    q = np.random.default_rng(0).standard_normal((8, 6))
    rep = V.safe_exploration(Z, q=q, progress=False)
    assert rep.inputs["q"] == "given" and rep.inputs["m_H"] == 6
    assert rep.verdict is Verdict.VERIFIED
    with pytest.raises(ValueError, match="q must have shape"):
        V.safe_exploration(Z, q=np.ones((7, 6)), progress=False)
    with pytest.raises(ValueError, match="m_H"):
        V.safe_exploration(Z, q=q, m_H=5, progress=False)
    with pytest.raises(ValueError, match="m_H must be a positive int"):
        V.safe_exploration(Z, m_H=0, progress=False)


def test_seed_determines_q(digits, small_resnet):
    Zbar = small_resnet.eval().features(digits.X[:60]).detach()
    a = V.safe_exploration(Zbar, seed=1, progress=False)
    b = V.safe_exploration(Zbar, seed=1, progress=False)
    c = V.safe_exploration(Zbar, seed=2, progress=False)
    ca, cb, cc = (V.VerificationReport.from_dict(r.to_dict()).certificate_object() for r in (a, b, c))
    assert ca.comparable() == cb.comparable()
    assert ca.sigma_min_lower != cc.sigma_min_lower


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="NaN"):
        V.safe_exploration(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), progress=False)
    with pytest.raises(ValueError, match=r"\(n, m\) matrix"):
        V.safe_exploration(torch.ones(3, 2, 2), progress=False)
    with pytest.raises(ValueError, match="data is required"):
        V.safe_exploration(torch.nn.Linear(2, 2), progress=False)
    with pytest.raises(TypeError, match="nn.Module"):
        V.safe_exploration("resnet", progress=False)
