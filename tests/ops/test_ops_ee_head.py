"""gconv.ops.ee_head (seed 000, eq. 3.4) against the float64 autograd reference, every implementation."""
import importlib

import pytest
import torch

from gconv import _backends as B
from gconv import ops

eh = importlib.import_module("gconv.ops.ee_head")
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in.*:RuntimeWarning")


def make(bsz, m, m_h, m_y, dtype=torch.float64, frozen=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(bsz, m, generator=g, dtype=torch.float64)
    w = torch.randn(m_y, m_h, m + 1, generator=g, dtype=torch.float64) / (m + 1) ** 0.5
    v = torch.randn(m_y, m_h, generator=g, dtype=torch.float64)
    r = w + 0.3 * torch.randn(w.shape, generator=g, dtype=torch.float64) / (m + 1) ** 0.5 if frozen else None
    return z, w, v, r


def ref_and_grads(z, w, v, r, zeta, gout):
    z, w, v = (t.detach().double().requires_grad_() for t in (z, w, v))
    out = ops.ee_head_reference(z, w, v, None if r is None else r.double(), zeta)
    return (out.detach(), *torch.autograd.grad(out, (z, w, v), gout.double()))


def rel(x, ref):
    return ((x.double() - ref).abs().max() / ref.abs().max()).item()


SHAPES = [(1, 5, 3, 1), (37, 23, 19, 3), (20, 40, 33, 2), (16, 16, 16, 1)]


@pytest.mark.parametrize("frozen", [False, True], ids=["self-gated", "frozen-R"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-m{}-mH{}-my{}".format(*s))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_float64_reference(impl, strategy, frozen, shape, dtype):
    z, w, v, r = make(*shape, frozen=frozen)
    zeta = 0.8
    gout = torch.randn(shape[0], shape[3], dtype=torch.float64)
    ref = ref_and_grads(z, w, v, r, zeta, gout)
    zz, ww, vv = (t.to(dtype).requires_grad_() for t in (z, w, v))
    out = ops.ee_head(zz, ww, vv, None if r is None else r.to(dtype), zeta)
    grads = torch.autograd.grad(out, (zz, ww, vv), gout.to(dtype))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert out.dtype == dtype and out.shape == (shape[0], shape[3])
    for name, x, rf in zip(("f", "dz", "dW", "dV"), (out, *grads), ref):
        assert x.shape == rf.shape, name
        assert rel(x, rf) <= tol, (name, rel(x, rf))


@pytest.mark.parametrize("frozen", [False, True], ids=["self-gated", "frozen-R"])
def test_gradcheck_float64(impl, strategy, frozen):
    z, w, v, r = make(3, 4, 5, 2, frozen=frozen)
    inputs = tuple(t.clone().requires_grad_() for t in (z, w, v))
    assert torch.autograd.gradcheck(lambda a, b, c: ops.ee_head(a, b, c, r, 1.3), inputs)


@pytest.mark.parametrize("frozen", [False, True], ids=["self-gated", "frozen-R"])
def test_gradgradcheck_float64(impl, frozen):
    """create_graph=True gives a differentiable gradient (Hessian-vector products)."""
    z, w, v, r = make(2, 3, 4, 2, frozen=frozen)
    inputs = tuple(t.clone().requires_grad_() for t in (z, w, v))
    assert torch.autograd.gradgradcheck(lambda a, b, c: ops.ee_head(a, b, c, r, 0.7), inputs)


@pytest.mark.parametrize("frozen", [False, True], ids=["self-gated", "frozen-R"])
@pytest.mark.parametrize("which", ["z", "W", "V", "W+V", "z+V"])
def test_only_requested_gradients_are_computed(impl, strategy, frozen, which, monkeypatch):
    """needs_input_grad decides the work: e.g. the exploitation phase (R frozen, only W) asks for dW only."""
    z, w, v, r = make(9, 7, 6, 2, frozen=frozen)
    want = {"z": z, "W": w, "V": v}
    leaves = {k: t.clone().requires_grad_(k in which.split("+")) for k, t in want.items()}
    seen = []
    orig = eh._BWD[impl]
    monkeypatch.setitem(eh._BWD, impl, lambda *a: seen.append(a[-1]) or orig(*a))
    out = ops.ee_head(leaves["z"], leaves["W"], leaves["V"], r, 0.9)
    gout = torch.randn_like(out)
    out.backward(gout)
    ref = dict(zip(("z", "W", "V"), ref_and_grads(z, w, v, r, 0.9, gout)[1:]))
    expected_mask = sum(bit for k, bit in (("z", 1), ("W", 2), ("V", 4)) if k in which.split("+"))
    assert seen == [expected_mask]
    for k, t in leaves.items():
        if k in which.split("+"):
            assert rel(t.grad, ref[k]) < 1e-12, k
        else:
            assert t.grad is None, k


def test_saved_tensors_policy(monkeypatch):
    """What the forward keeps for backward (strategy 'save'), and nothing at all without grad."""
    monkeypatch.setenv("GCONV_EE_HEAD_BACKWARD", "save")
    seen = []
    orig = eh._FWD["torch"]
    monkeypatch.setitem(eh._FWD, "torch", lambda *a: seen.append(a[-1]) or orig(*a))
    z, w, v, r = make(5, 4, 3, 2, frozen=True)
    with B.use_backend("torch"):
        ops.ee_head(z, w, v, None)                                     # no grad anywhere
        ops.ee_head(z, w.requires_grad_(), v, None)                    # self-gated: a
        ops.ee_head(z, w, v, r)                                        # frozen, dW only: s
        ops.ee_head(z.requires_grad_(), w, v, r)                       # frozen, dz too: s and a
        with torch.no_grad():
            ops.ee_head(z, w, v, r)
    assert seen == [0, eh.SAVE_A, eh.SAVE_S, eh.SAVE_S | eh.SAVE_A, 0]


def test_noncontiguous_inputs(impl):
    z, w, v, r = make(11, 9, 5, 3, frozen=True)
    zt = z.t().contiguous().t()                       # column-major z
    zs = torch.randn(11, 18, dtype=torch.float64)[:, ::2]   # strided z
    wt = w.transpose(0, 1).contiguous().transpose(0, 1)     # non-contiguous W, V, R
    vt = v.t().contiguous().t()
    rt = r.transpose(0, 1).contiguous().transpose(0, 1)
    for zz in (zt, zs):
        for gate in (None, rt):
            zz_ = zz.clone().requires_grad_() if zz is zs else zz.detach().requires_grad_()
            ww = wt.detach().requires_grad_()
            out = ops.ee_head(zz_, ww, vt, gate, 1.1)
            gout = torch.randn_like(out)
            dz, dw = torch.autograd.grad(out, (zz_, ww), gout)
            ref = ref_and_grads(zz.detach(), w, v, None if gate is None else r, 1.1, gout)
            assert rel(out, ref[0]) < 1e-12 and rel(dz, ref[1]) < 1e-12 and rel(dw, ref[2]) < 1e-12


def test_batch_of_one_and_empty_batch(impl):
    z, w, v, r = make(1, 6, 4, 2)
    zz = z.clone().requires_grad_()
    out = ops.ee_head(zz, w, v)
    out.sum().backward()
    assert rel(out, ops.ee_head_reference(z, w, v)) < 1e-12
    e = torch.empty(0, 6, dtype=torch.float64, requires_grad=True)
    ww = w.clone().requires_grad_()
    out = ops.ee_head(e, ww, v)
    assert out.shape == (0, 2)
    out.sum().backward()
    assert torch.equal(ww.grad, torch.zeros_like(w))


def test_frozen_gate_gets_no_gradient_and_must_not_require_one(impl):
    z, w, v, r = make(4, 3, 5, 2, frozen=True)
    w = w.requires_grad_()
    out = ops.ee_head(z, w, v, r)
    out.sum().backward()
    assert r.grad is None and not r.requires_grad and w.grad is not None
    with pytest.raises(ValueError, match="gate_weight requires grad.*detach"):
        ops.ee_head(z, w, v, r.clone().requires_grad_())


def test_frozen_gate_at_switch_gives_same_output(impl):
    z, w, v, _ = make(8, 5, 7, 3)
    a = ops.ee_head(z, w, v)
    b = ops.ee_head(z, w, v, w.clone())
    assert torch.allclose(a, b, rtol=1e-14, atol=0)


def test_bad_inputs_name_the_problem():
    z, w, v, r = make(4, 3, 5, 2, frozen=True)
    with pytest.raises(ValueError, match="z must be 2-D"):
        ops.ee_head(z[0], w, v)
    with pytest.raises(ValueError, match="weight must be 3-D"):
        ops.ee_head(z, w[0], v)
    with pytest.raises(ValueError, match="z has 3 features but weight .* expects 2"):
        ops.ee_head(z, w[..., 1:], v)
    with pytest.raises(ValueError, match=r"output_weight must have shape .*\(2, 5\)"):
        ops.ee_head(z, w, v[:, 1:])
    with pytest.raises(ValueError, match="gate_weight must have the shape of weight"):
        ops.ee_head(z, w, v, r[:, 1:])
    with pytest.raises(TypeError, match="z must be a floating-point tensor.*torch.int64"):
        ops.ee_head(z.long(), w, v)
    with pytest.raises(TypeError, match="z has dtype torch.float32 but weight has dtype torch.float64"):
        ops.ee_head(z.float(), w, v)
    with pytest.raises(TypeError, match="gate_weight has dtype"):
        ops.ee_head(z, w, v, r.float())
    with pytest.raises(ValueError, match="z is on cpu but weight is on meta"):
        ops.ee_head(z, w.to("meta"), v)
    with pytest.raises(ValueError, match="gate_zeta must be a positive finite number"):
        ops.ee_head(z, w, v, None, 0.0)
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        ops.ee_head(z, w.tolist(), v)


def test_torch_compile_fullgraph_cpu():
    z, w, v, r = make(13, 7, 9, 2, frozen=True)

    def step(z, w, v, r):
        return (ops.ee_head(z, w, v, None, 1.0) + ops.ee_head(z, w, v, r, 1.0)).square().sum()

    cstep = torch.compile(step, fullgraph=True)
    args = [t.clone().requires_grad_() for t in (z, w, v)]
    loss = cstep(*args, r)
    grads = torch.autograd.grad(loss, args)
    args2 = [t.clone().requires_grad_() for t in (z, w, v)]
    loss2 = step(*args2, r)
    grads2 = torch.autograd.grad(loss2, args2)
    assert torch.allclose(loss, loss2, rtol=1e-12, atol=0)
    for a, b in zip(grads, grads2):
        assert torch.allclose(a, b, rtol=1e-11, atol=1e-13)


def test_autocast_bfloat16_cpu():
    z, w, v, _ = make(6, 8, 5, 2)
    z, w, v = z.float(), w.float().requires_grad_(), v.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.ee_head(z, w, v)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert w.grad.dtype == torch.float32
    ref = ops.ee_head_reference(z.double(), w.detach().double(), v.double())
    assert rel(out, ref) < 5e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_dtypes_cpu(impl, dtype):
    z, w, v, r = make(10, 16, 16, 2, frozen=True)
    zz, ww, vv = (t.to(dtype).requires_grad_() for t in (z, w, v))
    out = ops.ee_head(zz, ww, vv, r.to(dtype))
    out.float().sum().backward()
    ref = ops.ee_head_reference(*(t.to(dtype).double() for t in (z, w, v, r)))
    assert out.dtype == dtype and rel(out, ref) < 3e-2
    assert all(t.grad.dtype == dtype and torch.isfinite(t.grad).all() for t in (zz, ww, vv))


def test_torch_func_transforms_fall_back_to_the_reference():
    import torch.func as F
    z, w, v, r = make(3, 4, 5, 2, frozen=True)
    jac = F.jacrev(lambda ww: ops.ee_head(z, ww, v, r))(w)
    jac_ref = torch.autograd.functional.jacobian(lambda ww: ops.ee_head_reference(z, ww, v, r), w)
    assert torch.allclose(jac, jac_ref, rtol=1e-12, atol=1e-14)
    per = F.vmap(lambda zi: ops.ee_head(zi[None], w, v)[0])(z)
    assert torch.allclose(per, ops.ee_head_reference(z, w, v), rtol=1e-12, atol=0)
    _, jv = F.jvp(lambda zz: ops.ee_head(zz, w, v), (z,), (torch.ones_like(z),))
    _, jv_ref = torch.autograd.functional.jvp(lambda zz: ops.ee_head_reference(zz, w, v), z, torch.ones_like(z))
    assert torch.allclose(jv, jv_ref, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- GPU (skipped here with the reason)
@pytest.mark.gpu
@pytest.mark.parametrize("gpu_impl", ["cuda", "triton"])
@pytest.mark.parametrize("frozen", [False, True], ids=["self-gated", "frozen-R"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("strat", ["save", "recompute"])
@pytest.mark.parametrize("shape", [(37, 23, 19, 3), (300, 513, 234, 10), (129, 200, 1000, 1)], ids=str)
def test_gpu_matches_reference(gpu_impl, frozen, dtype, strat, shape, monkeypatch):
    ok, why = B._CHECKS["ee_head"][gpu_impl]("cuda")
    if not ok:
        pytest.skip(f"{gpu_impl}: {why}")
    monkeypatch.setenv("GCONV_EE_HEAD_BACKWARD", strat)
    z, w, v, r = make(*shape, frozen=frozen)
    gout = torch.randn(shape[0], shape[3], dtype=torch.float64)
    ref = ref_and_grads(z, w, v, r, 0.8, gout)
    dev = dict(device="cuda", dtype=dtype)
    zz, ww, vv = (t.to(**dev).requires_grad_() for t in (z, w, v))
    with B.use_backend(gpu_impl):
        out = ops.ee_head(zz, ww, vv, None if r is None else r.to(**dev), 0.8)
        grads = torch.autograd.grad(out, (zz, ww, vv), gout.to(**dev))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for name, x, rf in zip(("f", "dz", "dW", "dV"), (out, *grads), ref):
        assert rel(x.cpu(), rf) <= tol, (name, rel(x.cpu(), rf))


@pytest.mark.gpu
@pytest.mark.parametrize("gpu_impl", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_half_dtypes(gpu_impl, dtype):
    ok, why = B._CHECKS["ee_head"][gpu_impl]("cuda")
    if not ok:
        pytest.skip(f"{gpu_impl}: {why}")
    z, w, v, r = make(257, 96, 70, 3, frozen=True)
    zz, ww, vv = (t.to("cuda", dtype).requires_grad_() for t in (z, w, v))
    with B.use_backend(gpu_impl):
        out = ops.ee_head(zz, ww, vv, r.to("cuda", dtype))
        out.float().sum().backward()
    ref = ops.ee_head_reference(*(t.to(dtype).double() for t in (z, w, v, r)))
    assert rel(out.cpu(), ref) < 3e-2


@pytest.mark.gpu
def test_gpu_tf32x3_precision(monkeypatch):
    ok, why = B._CHECKS["ee_head"]["triton"]("cuda")
    if not ok:
        pytest.skip(f"triton: {why}")
    monkeypatch.setenv("GCONV_FP32_DOT", "tf32x3")
    z, w, v, _ = make(300, 513, 234, 10)
    zz, ww = z.float().cuda().requires_grad_(), w.float().cuda().requires_grad_()
    with B.use_backend("triton"):
        out = ops.ee_head(zz, ww, v.float().cuda())
        out.sum().backward()
    ref = ref_and_grads(z, w, v, None, 1.0, torch.ones(300, 10, dtype=torch.float64))
    assert rel(out.cpu(), ref[0]) <= 1e-5 and rel(ww.grad.cpu(), ref[2]) <= 1e-5


@pytest.mark.parametrize("frozen", [False, True], ids=["self-gated", "frozen-R"])
def test_cpp_row_chunks(strategy, frozen):
    """B×N above the C++ chunk (2²² elements): forward, recomputation and dW accumulate over chunks."""
    ok, why = B._CHECKS["ee_head"]["cpp"]("cpu")
    if not ok:
        pytest.skip(f"cpp implementation unavailable here: {why}")
    z, w, v, r = make(2100, 5, 1001, 2, frozen=frozen)        # B·N = 4.2M > 4,194,304 → two chunks
    gout = torch.randn(2100, 2, dtype=torch.float64)
    ref = ref_and_grads(z, w, v, r, 0.6, gout)
    zz, ww, vv = (t.clone().requires_grad_() for t in (z, w, v))
    with B.use_backend("cpp"):
        out = ops.ee_head(zz, ww, vv, r, 0.6)
        grads = torch.autograd.grad(out, (zz, ww, vv), gout)
    for name, x, rf in zip(("f", "dz", "dW", "dV"), (out, *grads), ref):
        assert rel(x, rf) <= 1e-12, (name, rel(x, rf))


@pytest.mark.parametrize("frozen", [False, True], ids=["self-gated", "frozen-R"])
def test_custom_op_path_matches_and_gradchecks(impl, frozen):
    """Eager calls use an autograd.Function; torch.compile traces torch.ops.gconv.ee_head — test both."""
    z, w, v, r = make(3, 4, 5, 2, frozen=frozen)
    inputs = tuple(t.clone().requires_grad_() for t in (z, w, v))
    save = eh.SAVE_A | (eh.SAVE_S if frozen else 0)
    out = torch.ops.gconv.ee_head(*inputs, r, 1.3, save)[0]
    assert torch.allclose(out, ops.ee_head(*inputs, r, 1.3), rtol=1e-14, atol=0)
    assert torch.autograd.gradcheck(lambda a, b, c: torch.ops.gconv.ee_head(a, b, c, r, 1.3, save)[0], inputs)
    torch.library.opcheck(torch.ops.gconv.ee_head.default, (z, w, v, r, 1.3, save))
