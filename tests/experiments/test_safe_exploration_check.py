"""The demo's safe-exploration check (seed 000, Assumption 4) against a dense float64 reference."""
import numpy as np
import pytest
import torch
from torch import nn

import gconv.models as M
from gconv.demo import ee_head_factors, safe_exploration_check
from gconv.nn import EEHead
from gconv.train import add_ee_head


def _phi_reference(model, head, X, Q):
    """φ row i = [σ̃(ζ′ z̃_iᵀ q_1) z̃_iᵀ, …] built densely from the model's layers in float64."""
    with torch.no_grad():
        z = model.trunk(X).double()
    zt = torch.cat([z, torch.ones(z.shape[0], 1, dtype=torch.float64)], 1)
    s = torch.sigmoid(head.gate_zeta * zt @ Q.t())
    return torch.stack([torch.kron(s[i], zt[i]) for i in range(X.shape[0])])


def test_factors_match_dense_phi_and_rank():
    model = M.MLP(3, [5, 4], 1, seed=1)
    add_ee_head(model, seed=2)             # merges fc2 → act2 → head: EEHead(5 → 1, m_H = 4)
    head = model.head
    X = torch.randn(9, 3, dtype=torch.float32)
    S, Z = ee_head_factors(model, head, X, q="gate")
    assert S.dtype == Z.dtype == torch.float64 and S.shape == (9, 4) and Z.shape == (9, 6)
    phi = _phi_reference(model, head, X, head.weight[0].detach().double())
    kr = torch.stack([torch.kron(S[i], Z[i]) for i in range(9)])
    torch.testing.assert_close(kr, phi, rtol=1e-6, atol=1e-7)   # float32 trunk, float64 reference
    res = safe_exploration_check(model, X)
    assert res["verdict"] == "VERIFIED" and np.linalg.matrix_rank(phi.numpy()) == 9
    assert res["sigma_min_lower"] > 0 and res["D"] == 24 and res["m_H_minus_1"] == 6


def test_random_q_is_seeded_and_shape_checked():
    model = M.MLP(2, [6, 3], 1, seed=0)
    add_ee_head(model, seed=0)
    X = torch.randn(7, 2)
    a = ee_head_factors(model, model.head, X, q="random", seed=5)[0]
    b = ee_head_factors(model, model.head, X, q="random", seed=5)[0]
    c = ee_head_factors(model, model.head, X, q="random", seed=6)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match=r"q must have shape \(m_H, m_\(H-1\)\) = \(3, 7\)"):
        ee_head_factors(model, model.head, X, q=torch.zeros(2, 7))
    with pytest.raises(ValueError, match="q must be 'gate', 'random'"):
        ee_head_factors(model, model.head, X, q="normal")


def test_more_samples_than_columns_is_proved_deficient():
    # m_H·m_(H−1) = 2·3 = 6 < n = 10: rank φ < n, a proof, not a guess
    model = nn.Sequential(nn.Linear(1, 2), nn.Tanh(), EEHead(2, 1, 2))
    X = torch.linspace(-1, 1, 10).unsqueeze(1)
    res = safe_exploration_check(model, X)
    assert res["verdict"] == "NOT VERIFIED" and res["D"] == 6


def test_duplicate_inputs_are_proved_deficient():
    model = M.MLP(1, [8, 8], 1, seed=0)
    add_ee_head(model, seed=0)
    X = torch.tensor([[0.1], [0.5], [0.1], [-0.3]])
    assert safe_exploration_check(model, X)["verdict"] == "NOT VERIFIED"


def test_needs_exactly_one_ee_head():
    with pytest.raises(ValueError, match="exactly one EEHead"):
        safe_exploration_check(M.MLP(1, [4], 1), torch.randn(3, 1))
