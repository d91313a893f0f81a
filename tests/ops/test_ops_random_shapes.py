"""Property tests: random shapes, strides and parameters against the float64 references."""
import contextlib
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gconv import _backends as B
from gconv import ops

pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in.*:RuntimeWarning")


@contextlib.contextmanager
def backend(impl):
    old = os.environ.get("TRITON_INTERPRET")
    if impl == "triton":
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        ok, why = B._CHECKS["ee_head"][impl]("cpu")
        if not ok:
            pytest.skip(f"{impl} unavailable: {why}")
        with B.use_backend(impl):
            yield
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


EXAMPLES = {"torch": 25, "cpp": 25, "triton": 6}


@pytest.mark.parametrize("impl", ["torch", "cpp", "triton"])
def test_ee_head_random_shapes(impl):
    @settings(max_examples=EXAMPLES[impl], deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(bsz=st.integers(1, 40), m=st.integers(1, 37), m_h=st.integers(1, 29), m_y=st.integers(1, 4),
           frozen=st.booleans(), transpose_z=st.booleans(), zeta=st.floats(0.05, 4.0),
           seed=st.integers(0, 2**31 - 1))
    def check(bsz, m, m_h, m_y, frozen, transpose_z, zeta, seed):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(bsz, m, generator=g, dtype=torch.float64)
        if transpose_z:
            z = z.t().contiguous().t()
        w = torch.randn(m_y, m_h, m + 1, generator=g, dtype=torch.float64) / (m + 1) ** 0.5
        v = torch.randn(m_y, m_h, generator=g, dtype=torch.float64)
        # well-scaled like trained weights: fp32 itself cannot promise 1e-5 when ζ′·|r| is huge
        r = torch.randn(m_y, m_h, m + 1, generator=g, dtype=torch.float64) / (m + 1) ** 0.5 if frozen else None
        leaves = [t.clone().requires_grad_() for t in (z, w, v)]
        out_ref = ops.ee_head_reference(*leaves, r, zeta)
        gout = torch.randn(out_ref.shape, generator=g, dtype=torch.float64)
        grads_ref = torch.autograd.grad(out_ref, leaves, gout)
        with backend(impl):
            zz, ww, vv = (t.to(torch.float32).requires_grad_() for t in (z, w, v))
            out = ops.ee_head(zz, ww, vv, None if r is None else r.float(), zeta)
            grads = torch.autograd.grad(out, (zz, ww, vv), gout.float())
        for x, ref in zip((out, *grads), (out_ref, *grads_ref)):
            scale = ref.abs().max().item()
            assert (x.double() - ref).abs().max().item() <= 1e-5 * max(scale, 1e-30) + 1e-6 * (scale == 0)

    check()


@pytest.mark.parametrize("impl", ["torch", "cpp", "triton"])
def test_softplus_random_shapes_and_strides(impl):
    @settings(max_examples=EXAMPLES[impl], deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), zeta=st.floats(0.01, 1e4),
           scale=st.floats(1e-4, 1e3), perm=st.booleans(), seed=st.integers(0, 2**31 - 1))
    def check(shape, zeta, scale, perm, seed):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(shape, generator=g, dtype=torch.float64) * scale
        if perm and z.dim() > 1:
            z = z.transpose(0, -1)
        with backend(impl):
            zz = z.float().requires_grad_()
            y = ops.softplus(zz, zeta)
            (d,) = torch.autograd.grad(y, zz, torch.ones_like(y))
        ref = ops.softplus_reference(zz.detach().double(), zeta)
        assert ((y.double() - ref).abs() <= 1e-5 * ref.abs() + 1e-37).all()
        dref = torch.sigmoid(zeta * zz.detach().double())
        assert ((d.double() - dref).abs() <= 1e-5 * dref.abs() + 1e-37).all()

    check()
