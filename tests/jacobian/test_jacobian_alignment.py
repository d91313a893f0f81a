"""Alignment (seed 000 Def. 2), Q_T tracking (eq. 2.5), representation change (Table 1), gradient-basis gap
(seed 001 Thm. 1) on planted cases with known answers."""
import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from gconv._utils import dumps, to_jsonable
from gconv.jacobian import QTracker, alignment, gradient_basis_gap, representation_change

from _jacobian_models import MLP, make, reference_jacobian

ITERATIVE = ["lsmr", "lsqr"]
ROUTES = ITERATIVE + ["gram"]


def _narrow(n=30, seed=0):
    """d = 17 < n·m_y = 2n: J has a large left null space."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(2, 3), nn.Softplus(), nn.Linear(3, 2)).double().eval()
    X = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return m, X


def _planted(m, X, seed=0):
    D = reference_jacobian(m, X)
    g = torch.Generator().manual_seed(seed)
    y_in = D @ torch.randn(D.shape[1], dtype=torch.float64, generator=g)
    U, S, _ = torch.linalg.svd(D)
    r = int((S > S[0] * 1e-10).sum())
    perp = U[:, r:] @ torch.randn(D.shape[0] - r, dtype=torch.float64, generator=g)
    y_out = y_in + 0.5 * perp / perp.norm() * y_in.norm()
    return y_in, y_out


@pytest.mark.parametrize("method", ROUTES)
def test_squared_loss_planted_true_and_false(method):
    m, X = _narrow()
    y_in, y_out = _planted(m, X)
    r = alignment(m, (X, y_in.reshape(-1, 2)), "squared", method=method)
    assert r.verdict == "ALIGNED", r.message
    assert r.relative_residual <= r.tol and r.method == method
    D = reference_jacobian(m, X)
    torch.testing.assert_close(D @ r.solution, y_in, rtol=1e-6, atol=1e-6)       # the exhibited x
    r = alignment(m, (X, y_out.reshape(-1, 2)), nn.MSELoss(), method=method)
    assert r.verdict == "NOT_ALIGNED", r.message
    assert r.relative_residual == pytest.approx(0.5 / np.sqrt(1.25), rel=1e-6)   # ‖P⊥y‖/‖y‖
    assert r.distance_lower_estimate > r.tol
    if method in ITERATIVE:
        assert r.istop in (2, 5) and r.iterations > 0


def _duplicates(n=8, classes=3, seed=0):
    """A wide MLP; two identical inputs carry different labels → identical rows of J → Y_ℓ ∉ Col(J)."""
    torch.manual_seed(seed)
    m = MLP(d_in=4, widths=(16,), m_y=classes).double().eval()
    X = torch.randn(n, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    y = torch.arange(n) % classes
    Xd = X.clone()
    Xd[1] = Xd[0]
    yd = y.clone()
    yd[1] = (y[0] + 1) % classes
    return m, X, y, Xd, yd


@pytest.mark.parametrize("method", ROUTES)
def test_cross_entropy_planted_true_and_false(method):
    m, X, y, Xd, yd = _duplicates()
    r = alignment(m, (X, y), "cross_entropy", method=method)     # n·m_y = 24 ≤ d = 131, distinct inputs
    assert r.verdict == "ALIGNED", r.message
    assert r.target_transform == "2Y-1" and r.loss == "cross_entropy"
    r = alignment(m, (Xd, yd), nn.CrossEntropyLoss(), method=method)
    assert r.verdict == "NOT_ALIGNED", r.message
    # the two rows differ in Y_ℓ by 2 in two outputs; the best fit averages them: dist = √(2·(1² + 1²)) = 2
    assert r.residual_norm == pytest.approx(2.0, rel=1e-5)
    # one-hot float targets are accepted as well
    oh = torch.nn.functional.one_hot(y, 3).double()
    assert alignment(m, (X, oh), "ce", method=method).verdict == "ALIGNED"


def test_binary_cross_entropy_and_train_mode_batchnorm():
    m, X = make("cnn", n=5)
    m.train()                                   # coupled: the whole-data-set function is differentiated
    Y = (torch.arange(15).reshape(5, 3) % 2).double()
    D = reference_jacobian(m, X)
    for method in ("lsmr", "gram"):
        r = alignment(m, (X, Y), nn.BCEWithLogitsLoss(), method=method)
        assert r.coupling == "full_batch" and r.verdict == "ALIGNED", r.message
        torch.testing.assert_close(D @ r.solution, (2 * Y - 1).reshape(-1), rtol=1e-6, atol=1e-6)


def test_inconclusive_json_and_auto():
    m, X = _narrow()
    y_in, _ = _planted(m, X)
    r = alignment(m, (X, y_in.reshape(-1, 2)), "squared", method="lsmr", maxiter=2)
    assert r.verdict == "INCONCLUSIVE" and r.istop == 7 and "iteration limit" in r.message
    js = to_jsonable(r)
    assert "solution" not in js and js["verdict"] == "INCONCLUSIVE"
    json.loads(dumps(r))
    import gconv.linalg as GL
    r = alignment(m, (X, y_in.reshape(-1, 2)), "squared")
    assert r.method == ("exact" if hasattr(GL, "in_column_space") else "gram")
    r = alignment(m, (X, y_in.reshape(-1, 2)), "squared", exact_max_rows=10)
    assert r.method == "gram"                          # no certification by row count; K fits the budget
    r = alignment(m, (X, y_in.reshape(-1, 2)), "squared", exact_max_rows=10, memory_budget=2 * 60 * 60 * 8 - 1)
    assert r.method == "lsmr" and r.verdict == "ALIGNED"
    assert alignment(m, (X, torch.zeros(30, 2, dtype=torch.float64)), "squared").verdict == "ALIGNED"


@pytest.mark.parametrize("precondition", ["tensor", "column", "none"])
def test_preconditioners_keep_the_verdict(precondition):
    m, X, y, Xd, yd = _duplicates()
    assert alignment(m, (X, y), "ce", method="lsmr", precondition=precondition).verdict == "ALIGNED"
    assert alignment(m, (Xd, yd), "ce", method="lsmr", precondition=precondition).verdict == "NOT_ALIGNED"


def test_exact_route_with_gconv_linalg():
    m, X = _narrow()
    y_in, y_out = _planted(m, X)
    r = alignment(m, (X, y_in.reshape(-1, 2)), "squared", method="exact")
    assert r.verdict == "ALIGNED" and r.certified and r.certificate["status"] == "IN_COLUMN_SPACE"
    # K (60 × 60, rank 17) is rank deficient: "not in Col K" has no floating-point proof, so the verdict
    # is the numerical one and says so
    r = alignment(m, (X, y_out.reshape(-1, 2)), "squared", method="exact")
    assert r.verdict == "NOT_ALIGNED" and not r.certified and r.certificate["status"] == "INCONCLUSIVE"
    assert "could not certify" in r.message
    m, X, y, Xd, yd = _duplicates()
    assert alignment(m, (Xd, yd), "ce", method="exact").verdict == "NOT_ALIGNED"


def test_alignment_bad_input():
    m, X = _narrow()
    with pytest.raises(ValueError, match="no targets"):
        alignment(m, X, "squared")
    with pytest.raises(ValueError, match="values per sample"):
        alignment(m, (X, torch.zeros(30, 3, dtype=torch.float64)), "squared")
    with pytest.raises(ValueError, match="one-hot"):
        alignment(m, (X, torch.full((30, 2), 0.5, dtype=torch.float64)), "cross_entropy")
    with pytest.raises(ValueError, match="class indices must lie"):
        alignment(m, (X, torch.full((30,), 5)), "cross_entropy")
    with pytest.raises(ValueError, match="unknown loss"):
        alignment(m, (X, torch.zeros(30, 2, dtype=torch.float64)), "hinge")
    with pytest.raises(ValueError, match="label smoothing"):
        alignment(m, (X, torch.zeros(30, dtype=torch.long)), nn.CrossEntropyLoss(label_smoothing=0.1))
    with pytest.raises(ValueError, match="method must be"):
        alignment(m, (X, torch.zeros(30, 2, dtype=torch.float64)), "squared", method="svd")
    with pytest.raises(ValueError, match="NaN"):
        alignment(m, (X, torch.full((30, 2), float("nan"), dtype=torch.float64)), "squared")


# ---------------------------------------------------------------- Q_T
class _Gate(nn.Module):
    """f(x) = a · (v · tanh(W x)): with a = 0 the Jacobian has rank ≤ 1 (only ∂f/∂a ≠ 0) → not aligned."""

    def __init__(self):
        super().__init__()
        self.W = nn.Linear(3, 6, bias=False)
        self.v = nn.Linear(6, 1, bias=False)
        self.a = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return self.a * self.v(torch.tanh(self.W(x)))


def test_qtracker_counts_failures_and_resumes():
    torch.manual_seed(0)
    m = _Gate().double()
    X = torch.randn(10, 3, dtype=torch.float64)
    Y = torch.randn(10, 1, dtype=torch.float64)
    tracker = QTracker(m, (X, Y), "squared", method="gram")
    schedule = [0.0, 0.0, 1.0, 1.0, 0.0, 1.0]          # a at t = 0..5
    for t, a in enumerate(schedule):
        with torch.no_grad():
            m.a.fill_(a)
        tracker(0.123, epoch=t)                        # callback-style extra arguments are ignored
    assert tracker.Q == 3 and tracker.T == 5 and tracker.evaluated == 6
    assert [h["verdict"] for h in tracker.history] == ["NOT_ALIGNED", "NOT_ALIGNED", "ALIGNED", "ALIGNED",
                                                       "NOT_ALIGNED", "ALIGNED"]
    s = tracker.summary()
    assert s.Q == 3 and s.aligned == 3 and json.loads(dumps(s))["Q"] == 3
    # resume from a state dict, checking every second step only
    t2 = QTracker(m, (X, Y), "squared", method="lsmr", every=2)
    t2.load_state_dict(tracker.state_dict())
    with torch.no_grad():
        m.a.fill_(0.0)
    res = t2()                                           # t = 6: due (6 % 2 == 0), a = 0 → not aligned
    assert res.verdict == "NOT_ALIGNED" and t2.T == 6 and t2.Q == 4 and t2.evaluated == 7
    assert t2() is None and t2.T == 7                    # t = 7: not due


def test_qtracker_every_and_inconclusive_policy():
    torch.manual_seed(0)
    m = _Gate().double()
    X = torch.randn(10, 3, dtype=torch.float64)
    Y = torch.randn(10, 1, dtype=torch.float64)
    tr = QTracker(m, (X, Y), "squared", method="lsmr", maxiter=1, every=2, count_inconclusive=True)
    for t in range(5):
        tr(step=t)
    assert tr.evaluated == 3 and tr.inconclusive == 3 and tr.Q == 3
    tr2 = QTracker(m, (X, Y), "squared", method="lsmr", maxiter=1)
    tr2()
    assert tr2.Q == 0 and tr2.inconclusive == 1
    with pytest.raises(ValueError, match="every"):
        QTracker(m, (X, Y), "squared", every=0)


# ---------------------------------------------------------------- representation change
@pytest.mark.parametrize("kind", ["mlp", "resnet"])
def test_representation_change_matches_dense(kind):
    m, X = make(kind, n=6)
    m0 = copy.deepcopy(m)
    theta0 = copy.deepcopy(m.state_dict())
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    JT, J0 = reference_jacobian(m, X), reference_jacobian(m0, X)
    ref = float(((JT @ JT.T - J0 @ J0.T) ** 2).sum())
    for method in ("structured", "jacobian_contraction"):
        r = representation_change(m, theta0, X, method=method, chunk_size=2, memory_budget=4000)
        assert r.value == pytest.approx(ref, rel=1e-9) and r.blocks > 1
        assert r.norm_0 == pytest.approx(float((J0 @ J0.T).norm()), rel=1e-9)
    r2 = representation_change(m.state_dict(), m0, X, model=m)
    assert r2.value == pytest.approx(ref, rel=1e-9)
    assert representation_change(m, m, X).value == 0.0
    json.loads(dumps(r2))
    with pytest.raises(ValueError, match="needs model="):
        representation_change(m.state_dict(), theta0, X)


# ---------------------------------------------------------------- gradient-basis gap
def _fit_last_layer_ls(m, X, Y):
    with torch.no_grad():
        H = m.net[:-1](X)
        A = torch.cat([H, torch.ones(len(X), 1, dtype=X.dtype)], 1)
        sol = torch.linalg.lstsq(A, Y).solution
        m.net[-1].weight.copy_(sol[:-1].T)
        m.net[-1].bias.copy_(sol[-1])


def test_gap_squared_loss():
    torch.manual_seed(0)
    m = MLP(d_in=3, widths=(8,), m_y=2, zeta=1.0).double().eval()   # well-conditioned last-layer features
    X = torch.randn(40, 3, dtype=torch.float64)
    Y = torch.randn(40, 2, dtype=torch.float64)
    r = gradient_basis_gap(m, (X, Y), "squared")
    assert r.verdict == "GAP_POSITIVE" and r.gap > 0.1
    assert r.loss_value == pytest.approx(float(((m(X).detach() - Y) ** 2).sum(1).mean()), rel=1e-12)
    _fit_last_layer_ls(m, X, Y)                       # a critical point for the last layer's parameters
    r = gradient_basis_gap(m, (X, Y), "squared", params="last")
    assert r.verdict == "ZERO_GAP", r.message
    assert abs(r.gap) <= r.tol * r.loss_value and r.gap_upper_bound <= r.tol * r.loss_value
    r = gradient_basis_gap(m, (X, Y), nn.MSELoss(), params="last")
    assert r.weight == pytest.approx(1 / 80) and r.loss_value == pytest.approx(float(nn.MSELoss()(m(X).detach(), Y)))
    assert gradient_basis_gap(m, (X, Y), "squared").verdict == "GAP_POSITIVE"   # all layers: not critical
    json.loads(dumps(r))
    assert "solution" not in to_jsonable(r)


def test_gap_negative_when_outputs_leave_the_tangent_span():
    torch.manual_seed(0)
    m = MLP(d_in=3, widths=(4,), m_y=1).double().eval()
    with torch.no_grad():
        m.net[-1].bias.fill_(3.0)                     # a large offset no first-layer tangent can produce
    X = torch.randn(30, 3, dtype=torch.float64)
    Y = m(X).detach()                                 # L(θ) = 0
    r = gradient_basis_gap(m, (X, Y), "squared", params="net.0")
    assert r.loss_value < 1e-25 and r.verdict == "GAP_NEGATIVE", r.message


@pytest.mark.parametrize("loss", ["cross_entropy", "binary_cross_entropy"])
def test_gap_cross_entropy(loss):
    torch.manual_seed(0)
    m_y = 3 if loss == "cross_entropy" else 2
    m = MLP(d_in=3, widths=(5,), m_y=m_y, zeta=1.0).double().eval()
    X = torch.randn(40, 3, dtype=torch.float64)
    if loss == "cross_entropy":
        Y = torch.randint(0, m_y, (40,))
        crit = nn.CrossEntropyLoss()
    else:
        Y = torch.randint(0, 2, (40, m_y)).double()
        crit = nn.BCEWithLogitsLoss(reduction="sum")
    r = gradient_basis_gap(m, (X, Y), loss, params="last")
    assert r.verdict == "GAP_POSITIVE" and r.solver == "newton-cg"
    last = m.net[-1]
    opt = torch.optim.LBFGS(last.parameters(), max_iter=1000, tolerance_grad=1e-13, tolerance_change=0,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        val = crit(m(X), Y)
        val.backward()
        return val
    for _ in range(4):
        opt.step(closure)
    r = gradient_basis_gap(m, (X, Y), crit, params="last")
    assert r.verdict == "ZERO_GAP", r.message
    assert r.loss_value == pytest.approx(float(crit(m(X).detach(), Y)), rel=1e-10)
    assert r.converged


def test_gap_bad_input():
    m, X = _narrow()
    with pytest.raises(ValueError, match="no targets"):
        gradient_basis_gap(m, X, "squared")
    with pytest.raises(ValueError, match="lie in \\[0, 1\\]"):
        gradient_basis_gap(m, (X, torch.full((30, 2), 2.0, dtype=torch.float64)), "bce")
