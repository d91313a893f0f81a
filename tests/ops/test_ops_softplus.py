"""gconv.ops.softplus against the float64 reference, for every implementation that runs here."""
import importlib
import math
import threading

import pytest
import torch

from gconv import _backends as B
from gconv import ops

sp_mod = importlib.import_module("gconv.ops.softplus")

pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in.*:RuntimeWarning")


def rel_err(x, ref):
    """max |x − ref| / max |ref| over finite entries (0 for empty)."""
    x, ref = x.double(), ref.double()
    if ref.numel() == 0:
        return 0.0
    return ((x - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()


def elementwise_ok(x, ref, rtol, atol=1e-37):
    x, ref = x.double(), ref.double()
    return bool(((x - ref).abs() <= rtol * ref.abs() + atol).all())


SHAPES = [(1,), (7, 13), (3, 5, 17), (2, 1, 3, 33)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_backward_match_float64_reference(impl, shape, dtype):
    z64 = torch.randn(shape, dtype=torch.float64) * 0.05   # around the kink at ζ = 100
    z64.view(-1)[0] = 3.0
    ref = ops.softplus_reference(z64, 100.0)
    g64 = torch.randn(shape, dtype=torch.float64)
    gref = g64 * torch.sigmoid(100.0 * z64)
    z = z64.to(dtype).requires_grad_()
    y = ops.softplus(z, 100.0)
    (dz,) = torch.autograd.grad(y, z, g64.to(dtype))
    assert y.dtype == dtype and y.shape == z.shape
    rtol = 1e-5 if dtype == torch.float32 else 1e-13
    assert elementwise_ok(y, ref, rtol), rel_err(y, ref)
    assert elementwise_ok(dz, gref, rtol), rel_err(dz, gref)


@pytest.mark.parametrize("zeta", [100.0, 0.37, 1e4])
def test_gradcheck_float64(impl, zeta):
    z = (torch.randn(3, 7, dtype=torch.float64) / zeta).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.softplus(t, zeta), (z,))


def test_gradgradcheck_float64(impl):
    z = (torch.randn(2, 5, dtype=torch.float64) * 0.02).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda t: ops.softplus(t, 100.0), (z,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_inputs_are_finite_and_take_the_limits(impl, dtype):
    big = torch.finfo(dtype).max
    vals = [-big, -1e30, -1e4, -1e2, -1e-3, -0.0, 0.0, 1e-3, 1e2, 1e4, 1e30, big,
            torch.finfo(dtype).tiny, -torch.finfo(dtype).tiny]
    z = torch.tensor(vals, dtype=dtype, requires_grad=True)
    y = ops.softplus(z, 100.0)
    (dz,) = torch.autograd.grad(y.sum(), z)
    assert torch.isfinite(y).all() and torch.isfinite(dz).all()
    ref = ops.softplus_reference(torch.tensor(vals, dtype=torch.float64), 100.0)
    assert elementwise_ok(y, ref, 1e-5 if dtype == torch.float32 else 1e-13)
    # large positive: softplus(z) = z exactly, gradient 1; large negative: 0 and 0
    assert y[10].item() == torch.tensor(1e30, dtype=dtype).item() and dz[10].item() == 1.0
    assert y[11].item() == big and dz[11].item() == 1.0
    assert y[0].item() == 0.0 and dz[0].item() == 0.0
    assert y[2].item() == 0.0 and dz[2].item() == 0.0    # ζz = −1e6: exp underflows to exactly 0


def test_infinities_and_nan(impl):
    z = torch.tensor([math.inf, -math.inf, math.nan], dtype=torch.float32, requires_grad=True)
    y = ops.softplus(z, 100.0)
    (dz,) = torch.autograd.grad(y, z, torch.ones(3))
    assert y[0].item() == math.inf and dz[0].item() == 1.0
    assert y[1].item() == 0.0 and dz[1].item() == 0.0
    assert math.isnan(y[2].item()) and math.isnan(dz[2].item())


def test_layouts_noncontiguous_and_channels_last(impl):
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64) * 0.03
    cl = x.to(memory_format=torch.channels_last)
    y = ops.softplus(cl, 100.0)
    assert y.stride() == cl.stride()                               # dense layouts are kept
    assert torch.allclose(y, ops.softplus_reference(x, 100.0), rtol=1e-13, atol=0)
    t = x[0, 0].t()                                                 # transposed (dense)
    assert torch.allclose(ops.softplus(t, 100.0), ops.softplus_reference(t, 100.0), rtol=1e-13, atol=0)
    s = x[:, :, ::2, 1:]                                            # strided slice (not dense)
    z = s.clone().requires_grad_()
    zs = z.detach().clone().requires_grad_()
    y = ops.softplus(zs[:, :, :, :], 100.0)
    g = torch.randn(y.shape, dtype=torch.float64).transpose(0, 1).contiguous().transpose(0, 1)
    (d,) = torch.autograd.grad(y, zs, g)                            # grad with different strides
    assert torch.allclose(ops.softplus(s, 100.0), ops.softplus_reference(s, 100.0), rtol=1e-13, atol=0)
    assert torch.allclose(d, g * torch.sigmoid(100 * s), rtol=1e-13, atol=0)


def test_empty_and_scalar(impl):
    e = torch.empty(0, 3)
    assert ops.softplus(e).shape == (0, 3)
    s = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    y = ops.softplus(s, 100.0)
    y.backward()
    assert math.isclose(y.item(), math.log(2) / 100, rel_tol=1e-14) and s.grad.item() == 0.5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_dtypes_computed_in_float32(impl, dtype):
    z = (torch.randn(4, 33) * 0.05).to(dtype).requires_grad_()
    y = ops.softplus(z, 100.0)
    (dz,) = torch.autograd.grad(y, z, torch.ones_like(y))
    assert y.dtype == dtype and dz.dtype == dtype
    ref = ops.softplus_reference(z.detach().double(), 100.0)          # exact, then one rounding
    eps = torch.finfo(dtype).eps
    assert elementwise_ok(y, ref, eps, atol=1e-6)
    assert elementwise_ok(dz, torch.sigmoid(100 * z.detach().double()), eps, atol=1e-6)


def test_bad_inputs_name_the_problem():
    with pytest.raises(TypeError, match="floating-point.*torch.int64"):
        ops.softplus(torch.arange(3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        ops.softplus([1.0, 2.0])
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="zeta must be a positive finite number"):
            ops.softplus(torch.ones(2), bad)
    with pytest.raises(TypeError, match="zeta must be a Python number"):
        ops.softplus(torch.ones(2), torch.tensor(1.0))


def test_forced_backend_is_kept_for_backward_on_another_thread(monkeypatch):
    """use_backend is thread-local; backward must use the implementation that ran forward."""
    calls = []
    orig = dict(sp_mod._BWD)
    monkeypatch.setitem(sp_mod._BWD, "torch", lambda *a: calls.append("torch") or orig["torch"](*a))
    z = torch.randn(5, dtype=torch.float64, requires_grad=True)
    with B.use_backend("torch"):
        y = ops.softplus(z).sum()
    t = threading.Thread(target=y.backward)
    t.start()
    t.join()
    assert calls == ["torch"] and z.grad is not None


def test_torch_compile_fullgraph_cpu():
    def f(x):
        return ops.softplus(x * 2.0, 100.0).sum(dim=-1)

    cf = torch.compile(f, fullgraph=True, backend="inductor")
    x = (torch.randn(6, 9, dtype=torch.float64) * 0.01).requires_grad_()
    y = cf(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    x2 = x.detach().requires_grad_()
    y2 = f(x2)
    (g2,) = torch.autograd.grad(y2.sum(), x2)
    assert torch.allclose(y, y2, rtol=1e-13, atol=0) and torch.allclose(g, g2, rtol=1e-13, atol=0)


def test_torch_func_transforms_fall_back_to_the_reference():
    import torch.func as F
    z = torch.randn(3, 4, dtype=torch.float64) * 0.02
    t = torch.randn(3, 4, dtype=torch.float64)
    _, jv = F.jvp(lambda x: ops.softplus(x), (z,), (t,))
    assert torch.allclose(jv, torch.sigmoid(100 * z) * t, rtol=1e-13, atol=0)   # no silent zero tangent
    jac = F.jacrev(lambda x: ops.softplus(x))(z[0])
    assert torch.allclose(jac, torch.diag(torch.sigmoid(100 * z[0])), rtol=1e-13, atol=0)
    assert torch.allclose(F.vmap(ops.softplus)(z), ops.softplus_reference(z), rtol=1e-13, atol=0)
    gr = F.grad(lambda x: ops.softplus(x).sum())(z)
    assert torch.allclose(gr, torch.sigmoid(100 * z), rtol=1e-13, atol=0)


def test_module_forward_ad_falls_back():
    import torch.autograd.forward_ad as fwAD
    z = torch.randn(5, dtype=torch.float64) * 0.02
    t = torch.randn(5, dtype=torch.float64)
    with fwAD.dual_level():
        y = ops.softplus(fwAD.make_dual(z, t))
        tangent = fwAD.unpack_dual(y).tangent
    assert torch.allclose(tangent, torch.sigmoid(100 * z) * t, rtol=1e-13, atol=0)


# ---------------------------------------------------------------- GPU (skipped here with the reason)
@pytest.mark.gpu
@pytest.mark.parametrize("gpu_impl", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_gpu_matches_reference(gpu_impl, dtype):
    ok, why = B._CHECKS["softplus"][gpu_impl]("cuda")
    if not ok:
        pytest.skip(f"{gpu_impl}: {why}")
    z64 = torch.randn(1000, 1037, dtype=torch.float64, device="cuda") * 0.05
    z64[0, :6] = torch.tensor([math.inf, -math.inf, 1e30, -1e30, 1e4, -1e4], dtype=torch.float64)
    z = z64.to(dtype).requires_grad_()
    with B.use_backend(gpu_impl):
        y = ops.softplus(z, 100.0)
        (dz,) = torch.autograd.grad(y, z, torch.ones_like(y))
    ref = ops.softplus_reference(z.detach().double(), 100.0)
    gref = torch.sigmoid(100 * z.detach().double())
    rtol = {torch.float32: 1e-5, torch.float64: 1e-13}.get(dtype, torch.finfo(dtype).eps)
    assert elementwise_ok(y, ref, rtol, atol=1e-30 if dtype.itemsize >= 4 else 1e-6)
    assert elementwise_ok(dz, gref, rtol, atol=1e-30 if dtype.itemsize >= 4 else 1e-6)
    # odd offsets: unaligned storage goes through the scalar path
    zo = z.detach()[:, 1:]
    with B.use_backend(gpu_impl):
        assert elementwise_ok(ops.softplus(zo, 100.0), ops.softplus_reference(zo.double(), 100.0), rtol,
                              atol=1e-30 if dtype.itemsize >= 4 else 1e-6)


@pytest.mark.gpu
@pytest.mark.large
@pytest.mark.parametrize("gpu_impl", ["cuda", "triton"])
def test_gpu_more_than_2_31_elements(gpu_impl):
    ok, why = B._CHECKS["softplus"][gpu_impl]("cuda")
    if not ok:
        pytest.skip(f"{gpu_impl}: {why}")
    n = 2**31 + 1025
    z = torch.full((n,), -1.0, dtype=torch.bfloat16, device="cuda")
    z[-3:] = 1.0
    with B.use_backend(gpu_impl):
        y = ops.softplus(z, 100.0)
    assert y[-1].item() == 1.0 and y[0].item() == 0.0


def test_custom_op_path_matches_and_gradchecks(impl):
    """Eager calls use an autograd.Function; torch.compile traces torch.ops.gconv.softplus — test both."""
    z = (torch.randn(4, 9, dtype=torch.float64) * 0.03).requires_grad_()
    assert torch.equal(torch.ops.gconv.softplus(z, 100.0), ops.softplus(z, 100.0))
    assert torch.autograd.gradcheck(lambda t: torch.ops.gconv.softplus(t, 100.0), (z,))
    assert torch.autograd.gradgradcheck(lambda t: torch.ops.gconv.softplus(t, 100.0), (z,))
    torch.library.opcheck(torch.ops.gconv.softplus.default, (z.detach(), 100.0))
