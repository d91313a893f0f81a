"""The same operators on a CUDA device (skipped with the reason where none is visible)."""
import copy

import pytest
import torch

from gconv.jacobian import Jacobian, alignment, gradient_basis_gap, lsmr, ntk_gram

from _jacobian_models import make, reference_jacobian

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_operator_and_ntk_match_cpu_reference(kind, dtype):
    m, X = make(kind, n=6)
    ref = reference_jacobian(m, X)
    mc = copy.deepcopy(m).to("cuda", dtype)
    Xc = X.to("cuda", dtype)
    tol = dict(rtol=1e-5, atol=1e-8) if dtype == torch.float64 else dict(rtol=2e-3, atol=2e-4)
    J = Jacobian(mc, Xc, chunk_size=4)
    assert J.device.type == "cuda"
    v = torch.randn(J.d, dtype=torch.float64)
    u = torch.randn(J.shape[0], dtype=torch.float64)
    torch.testing.assert_close(J.mv(v.to("cuda", dtype)).cpu().double(), ref @ v, **tol)
    torch.testing.assert_close(J.rmv(u.to("cuda", dtype)).cpu().double(), ref.T @ u, **tol)
    torch.testing.assert_close(J.dense().cpu().double(), ref, **tol)
    for method in ("jacobian_contraction", "ntk_vector_products", "structured"):
        torch.testing.assert_close(ntk_gram(mc, Xc, method=method).cpu().double(), ref @ ref.T, **tol)


def test_cuda_solvers_alignment_and_gap():
    m, X = make("mlp", n=8)
    mc, Xc = copy.deepcopy(m).cuda(), X.cuda()
    Y = torch.arange(8, device="cuda") % 3
    for method in ("lsmr", "lsqr", "gram"):
        assert alignment(mc, (Xc, Y), "cross_entropy", method=method).verdict == "ALIGNED"
    A = torch.randn(30, 10, dtype=torch.float64, device="cuda")
    b = torch.randn(30, dtype=torch.float64, device="cuda")
    out = lsmr(A, b, atol=1e-12, btol=1e-12, maxiter=200)
    torch.testing.assert_close(out.x, torch.linalg.lstsq(A, b[:, None]).solution[:, 0], rtol=1e-8, atol=1e-10)
    r = gradient_basis_gap(mc, (Xc, Y), "cross_entropy", params="last")
    assert r.verdict in ("GAP_POSITIVE", "ZERO_GAP")
