"""LSQR / LSMR in torch against scipy.sparse.linalg and dense least squares."""
import numpy as np
import pytest
import scipy.sparse.linalg as sla
import torch

from gconv._utils import to_jsonable
from gconv.jacobian import Jacobian, lsmr, lsqr
from gconv.jacobian.solvers import ColScaled, RowScaled, as_operator

from _jacobian_models import make, reference_jacobian


def _problem(m, n, cond=1e3, seed=0):
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((m, m)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    k = min(m, n)
    S = np.zeros((m, n))
    S[:k, :k] = np.diag(np.logspace(0, -np.log10(cond), k))
    return U @ S @ V.T, rng.standard_normal(m)


@pytest.mark.parametrize("shape", [(30, 20), (20, 30), (2, 5), (7, 1)])
@pytest.mark.parametrize("damp", [0.0, 0.3])
def test_first_iterations_match_scipy(shape, damp):
    A, b = _problem(*shape)
    At, bt = torch.from_numpy(A), torch.from_numpy(b)
    for it in ((1, 2, 3) if min(shape) > 3 else (1,)):    # before the Krylov space is exhausted
        s1 = sla.lsqr(A, b, damp=damp, atol=0, btol=0, conlim=0, iter_lim=it)
        o1 = lsqr(At, bt, damp=damp, atol=0, btol=0, conlim=0, maxiter=it)
        np.testing.assert_allclose(o1.x.numpy(), s1[0], rtol=1e-10, atol=1e-13)
        assert o1.itn == s1[2]
        np.testing.assert_allclose([o1.normr, o1.norma, o1.conda, o1.normar, o1.normx],
                                   [s1[4], s1[5], s1[6], s1[7], s1[8]], rtol=1e-9, atol=1e-14)
        s2 = sla.lsmr(A, b, damp=damp, atol=0, btol=0, conlim=0, maxiter=it)
        o2 = lsmr(At, bt, damp=damp, atol=0, btol=0, conlim=0, maxiter=it)
        np.testing.assert_allclose(o2.x.numpy(), s2[0], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose([o2.normr, o2.normar, o2.norma, o2.conda, o2.normx],
                                   [s2[3], s2[4], s2[5], s2[6], s2[7]], rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("solver", [lsqr, lsmr])
@pytest.mark.parametrize("shape", [(40, 15), (15, 40)])
def test_converges_to_the_minimum_norm_least_squares_solution(solver, shape):
    A, b = _problem(*shape, cond=1e2, seed=1)
    out = solver(torch.from_numpy(A), torch.from_numpy(b), atol=1e-12, btol=1e-12, maxiter=500)
    x = np.linalg.lstsq(A, b, rcond=None)[0]
    np.testing.assert_allclose(out.x.numpy(), x, rtol=1e-7, atol=1e-9)
    assert out.istop in (1, 2) and out.converged
    assert abs(out.normr - np.linalg.norm(b - A @ x)) < 1e-8


@pytest.mark.parametrize("solver", [lsqr, lsmr])
def test_damped_solution(solver):
    A, b = _problem(25, 12, seed=2)
    damp = 0.5
    out = solver(torch.from_numpy(A), torch.from_numpy(b), damp=damp, atol=1e-13, btol=1e-13, maxiter=300)
    x = np.linalg.solve(A.T @ A + damp ** 2 * np.eye(12), A.T @ b)
    np.testing.assert_allclose(out.x.numpy(), x, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("solver", [lsqr, lsmr])
def test_stop_codes(solver):
    A, b = _problem(20, 8, seed=3)
    At = torch.from_numpy(A)
    z = solver(At, torch.zeros(20, dtype=torch.float64))
    assert z.istop == 0 and float(z.x.abs().max()) == 0
    compat = solver(At, At @ torch.ones(8, dtype=torch.float64), atol=1e-10, btol=1e-10, maxiter=200)
    assert compat.istop == 1 and compat.normr < 1e-8
    ls = solver(At, torch.from_numpy(b), atol=1e-10, btol=1e-10, maxiter=200)
    assert ls.istop == 2
    lim = solver(At, torch.from_numpy(b), atol=0, btol=0, maxiter=2)
    assert lim.istop == 7 and lim.itn == 2 and not lim.converged
    Ab, bb = _problem(30, 30, cond=1e9, seed=4)
    cl = solver(torch.from_numpy(Ab), torch.from_numpy(bb), atol=0, btol=0, conlim=1e3, maxiter=200)
    assert cl.istop == 3 and cl.conda > 1e3
    stop = solver(At, torch.from_numpy(b), atol=0, btol=0, callback=lambda itn, x, r, ar: itn >= 4)
    assert stop.istop == 7 and stop.itn == 4
    assert "iteration limit" in stop.message


def test_warm_start_float32_and_operators():
    A, b = _problem(30, 12, cond=10, seed=5)
    At, bt = torch.from_numpy(A), torch.from_numpy(b)
    x = np.linalg.lstsq(A, b, rcond=None)[0]
    out = lsmr(At, bt, x0=torch.from_numpy(x), atol=1e-12, btol=1e-12)
    assert out.itn <= 2
    np.testing.assert_allclose(out.x.numpy(), x, rtol=1e-9, atol=1e-11)
    o32 = lsqr(At.float(), bt.float(), atol=1e-6, btol=1e-6)
    assert o32.x.dtype == torch.float32
    np.testing.assert_allclose(o32.x.double().numpy(), x, rtol=1e-3, atol=1e-4)
    # scipy LinearOperator and numpy arrays as operators; row / column scaling
    o = lsqr(sla.aslinearoperator(A), b, atol=1e-12, btol=1e-12)
    np.testing.assert_allclose(o.x.numpy(), x, rtol=1e-8, atol=1e-10)
    w = torch.linspace(0.5, 2, 30, dtype=torch.float64)
    ow = lsqr(RowScaled(At, w), w * bt, atol=1e-12, btol=1e-12)
    xw = np.linalg.lstsq(w.numpy()[:, None] * A, w.numpy() * b, rcond=None)[0]
    np.testing.assert_allclose(ow.x.numpy(), xw, rtol=1e-8, atol=1e-10)
    s = torch.linspace(1, 3, 12, dtype=torch.float64)
    os_ = lsqr(ColScaled(At, s), bt, atol=1e-12, btol=1e-12)
    np.testing.assert_allclose((s * os_.x).numpy(), x, rtol=1e-8, atol=1e-10)
    assert isinstance(to_jsonable(out), dict) and "x" not in to_jsonable(out)


def test_on_a_jacobian_operator():
    m, X = make("cnn", n=4)
    J = Jacobian(m, X)
    D = reference_jacobian(m, X)
    y = torch.randn(J.shape[0], dtype=torch.float64)
    out = lsmr(J, y, atol=1e-12, btol=1e-12, maxiter=400)
    x = torch.linalg.lstsq(D, y[:, None]).solution[:, 0]          # J is wide: y ∈ Col(J)
    torch.testing.assert_close(D @ out.x, D @ x, rtol=1e-7, atol=1e-8)


def test_bad_input():
    A = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="5 rows"):
        lsqr(A, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        lsmr(A, torch.full((5,), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="x0 has shape"):
        lsqr(A, torch.zeros(5, dtype=torch.float64), x0=torch.zeros(4))
    with pytest.raises(TypeError, match="linear operator"):
        lsqr("A", torch.zeros(5))
    with pytest.raises(ValueError, match="2-D"):
        as_operator(torch.zeros(3))
