"""P-3L (seed 004): the three scalings, the fixed layers, the Gram matrix, linear-rate training."""
import math

import pytest
import torch

import gconv.models as M


def _manual(model, x):
    """f(x) = s_m Σ_i c_i σ(s_D Σ_j W_ij σ(z_jᵀx/√d)) in float64, from the paper's formulas."""
    d, m, D = model.d, model.m, model.D
    s_m = {"paper": 1 / m, "mf": 1 / m, "ntk": 1 / math.sqrt(m)}[model.scaling]
    s_D = {"paper": 1 / math.sqrt(D), "mf": 1 / D, "ntk": 1 / math.sqrt(D)}[model.scaling]
    x = x.double()
    phi = torch.tanh(x @ model.z.double().t() / math.sqrt(d))
    h = s_D * phi @ model.W.double().t()
    return s_m * torch.tanh(h) @ model.c.double()


@pytest.mark.parametrize("scaling", ["paper", "mf", "ntk"])
def test_p3l_matches_the_papers_formulas(scaling):
    p = M.P3L(5, 12, 9, scaling=scaling, seed=0, symmetrize=False)
    x = torch.randn(6, 5)
    torch.testing.assert_close(p(x)[:, 0].double(), _manual(p, x), rtol=1e-5, atol=1e-6)
    assert [n for n, _ in p.named_parameters()] == ["trunk.hidden.weight"]      # only W is trained
    assert p.W.shape == (12, 9) and p.z.shape == (9, 5)
    assert set(p.c.abs().tolist()) == {1.0} and set(p.c.sign().tolist()) <= {-1.0, 1.0}
    assert p.lr_scale == {"paper": 12.0, "mf": 12.0 * 9, "ntk": 1.0}[scaling]
    assert p.features(x).shape == (6, 12) and p.feature_dim == 12
    assert p.embedding(x).shape == (6, 9)


def test_p3l_state_dict_keeps_the_fixed_layers():
    p = M.P3L(4, 8, seed=1)
    q = M.P3L(4, 8, seed=2)
    q.load_state_dict(p.state_dict())
    x = torch.randn(3, 4)
    torch.testing.assert_close(p(x), q(x))


def test_ntk_symmetrisation_zero_output_at_init():
    p = M.P3L(20, 64, scaling="ntk", seed=0)
    assert p.symmetrized
    out = p(torch.randn(10, 20))
    assert float(out.detach().abs().max()) < 1e-5
    with pytest.raises(ValueError, match="even width"):
        M.P3L(20, 63, scaling="ntk")


def test_gram_is_embedding_gram_and_positive_definite():
    p = M.P3L(20, 8, D=2000, seed=0)
    x = torch.randn(30, 20, dtype=torch.float64)
    G = p.gram(x)
    phi = p.embedding(x)
    torch.testing.assert_close(G, phi @ phi.t() / 2000)
    assert float(torch.linalg.eigvalsh(G).min()) > 0
    ident = M.P3L(3, 8, embedding="identity")
    assert ident.D == 3 and ident.z is None
    xs = torch.randn(5, 3)
    torch.testing.assert_close(ident.embedding(xs), xs)
    assert torch.linalg.matrix_rank(ident.gram(xs.double())) == 3    # n > d: the shallow Gram is singular


def test_p3l_bad_arguments():
    with pytest.raises(ValueError, match="scaling must be one of"):
        M.P3L(3, 4, scaling="xavier")
    with pytest.raises(ValueError, match="d must be a positive int"):
        M.P3L(0, 4)
    with pytest.raises(ValueError, match="identity embedding has D = d"):
        M.P3L(3, 4, 5, embedding="identity")
    with pytest.raises(ValueError, match="expects inputs with d = 3"):
        M.P3L(3, 4)(torch.randn(2, 4))


def _train(p, X, Y, steps, delta=1.0):
    lr = delta * p.lr_scale
    opt = torch.optim.SGD(p.parameters(), lr=lr)
    losses = []
    h0 = p.trunk.hidden(p.embedding(X)).detach().clone()
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * ((p(X) - Y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    h1 = p.trunk.hidden(p.embedding(X)).detach()
    return losses, float((h1 - h0).norm() / h0.norm())


def test_paper_scaling_fits_random_data_at_a_linear_rate_and_learns_features(one_thread):
    """Seed 004 Experiment 1 in miniature: d = 20, y ~ U[−½, ½], n = 20, GD with step δ·lr_scale."""
    import gconv.data as D
    data = D.load_builtin("gaussian_regression", n=20, seed=0, dtype=torch.float64)
    X, Y = data.tensors()
    p = M.P3L(20, 256, seed=0).double()
    losses, move_paper = _train(p, X, Y, 400, delta=10.0)
    assert losses[-1] < 1e-4 * losses[0]
    # linear rate: the loss ratio over equal windows stays bounded away from 1
    assert losses[200] / losses[100] < 0.5 and losses[399] / losses[299] < 0.5
    # lr_scale makes the dynamics width-independent: a 4x wider net follows nearly the same curve
    wide, _ = _train(M.P3L(20, 1024, seed=0).double(), X, Y, 101, delta=10.0)
    assert abs(wide[100] / losses[100] - 1) < 0.3
    q = M.P3L(20, 256, seed=0, scaling="ntk").double()
    _, move_ntk = _train(q, X, Y, 400, delta=10.0)
    assert move_paper > 5 * move_ntk       # feature learning vs (nearly) lazy training
