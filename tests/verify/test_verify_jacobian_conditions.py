"""alignment (seed 000), NTK rank preserved (seed 003), gradient-basis gap (seed 001)."""
import copy

import pytest
import torch
from torch import nn

import gconv.data as D
import gconv.models as M
import gconv.verify as V
from gconv.verify import Verdict


def _mlp(width, seed=0, out=1, d_in=2):
    return M.MLP(d_in, [width], out, seed=seed).double()


def test_alignment_verified_for_an_overparameterised_net():
    d = D.load("builtin:two_moons", n=20, seed=0)
    X, Y = d.X.double(), d.Y
    rep = V.alignment(_mlp(24, out=2), (X, Y), "cross_entropy", progress=False, seed=0)
    assert rep.verdict is Verdict.VERIFIED
    assert rep.inputs["target_transform"] == "2Y-1" and rep.inputs["matrix_shape"][0] == 40
    assert rep.certificate_type == "AlignmentResult"


def test_alignment_target_outside_the_span_does_not_verify():
    torch.manual_seed(0)
    X = torch.randn(12, 3, dtype=torch.float64)
    Y = torch.randn(12, 1, dtype=torch.float64)          # generic: not in the 3-dim span of X's columns
    lin = nn.Linear(3, 1, bias=False).double()            # J = X (12 × 3)
    rep = V.alignment(lin, (X, Y), "squared", progress=False)
    # the K = J Jᵀ route cannot prove it (K is rank deficient); J's certified full column rank does
    assert rep.details["numerical_verdict"] == "NOT_ALIGNED"
    assert rep.verdict is Verdict.NOT_VERIFIED and rep.details["certified"]
    dist = torch.linalg.vector_norm(Y - X @ torch.linalg.lstsq(X, Y).solution) / torch.linalg.vector_norm(Y)
    assert rep.certificate["tol"] < rep.margin <= float(dist) * (1 + 1e-9)
    # a target inside the span verifies
    Y_in = X @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    assert V.alignment(lin, (X, Y_in), "squared", progress=False).verdict is Verdict.VERIFIED


def test_ntk_rank_preserved_verified_and_not_verified():
    torch.manual_seed(0)
    X = torch.randn(8, 2, dtype=torch.float64)
    w_tau = _mlp(16, seed=1)
    w_k = copy.deepcopy(w_tau)
    with torch.no_grad():                                  # a small second-phase move of the last layer
        w_k.head.weight.add_(0.01 * torch.randn_like(w_k.head.weight))
    rep = V.ntk_rank_preserved(w_k, X, w_tau, progress=False)
    assert rep.verdict is Verdict.VERIFIED
    assert rep.details["numerical_rank_k"] == rep.details["numerical_rank_tau"] == 8
    # collapsing w^k to zero makes every Jacobian row equal: rank K(w^k) = 1 < 8 = rank K(w^τ), proven
    zero = {k: torch.zeros_like(v) for k, v in w_tau.state_dict().items()}
    w_0 = copy.deepcopy(w_tau)
    w_0.load_state_dict(zero)
    rep = V.ntk_rank_preserved(w_0, X, w_tau.state_dict(), progress=False)
    assert rep.verdict is Verdict.NOT_VERIFIED
    assert rep.details["certificate_tau"]["status"] == "CERTIFIED_FULL_RANK"
    assert rep.details["numerical_rank_k"] == 1
    # both rank deficient: the certificates cannot compare the ranks
    rep = V.ntk_rank_preserved(w_0, X, w_0, progress=False)
    assert rep.verdict is Verdict.INCONCLUSIVE
    with pytest.raises(TypeError, match="reference"):
        V.ntk_rank_preserved(w_k, X, "w_tau", progress=False)


def test_gradient_basis_gap_zero_at_a_critical_point_positive_elsewhere():
    torch.manual_seed(0)
    X = torch.randn(30, 4, dtype=torch.float64)
    Y = torch.randn(30, 1, dtype=torch.float64)
    lin = nn.Linear(4, 1).double()
    rep = V.gradient_basis_gap(lin, (X, Y), "squared", progress=False)
    assert rep.verdict is Verdict.NOT_VERIFIED and rep.details["numerical_verdict"] == "GAP_POSITIVE"
    # the least-squares solution is the (global) critical point: the gap is zero
    A = torch.cat([X, torch.ones(30, 1, dtype=torch.float64)], 1)
    sol = torch.linalg.lstsq(A, Y).solution
    with torch.no_grad():
        lin.weight.copy_(sol[:4].T)
        lin.bias.copy_(sol[4])
    rep = V.gradient_basis_gap(lin, (X, Y), "squared", progress=False)
    assert rep.verdict is Verdict.VERIFIED, rep.message
    assert rep.margin <= rep.certificate["tol"]
