"""Fixtures for the fused-op tests: run a test once per implementation that can run on this machine.

``triton`` runs the real Triton kernels on CPU tensors through the interpreter (TRITON_INTERPRET=1,
set only for that test); ``cpp`` needs the built extension (``python setup.py build_ext --inplace``);
``torch`` is the plain-PyTorch implementation inside the custom op. The oracle is always the
float64 ``*_reference`` function, differentiated by autograd.
"""
import pytest

from gconv import _backends as B

CPU_IMPLS = ("torch", "cpp", "triton")


def _available(impl, monkeypatch):
    if impl == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    ok, why = B._CHECKS["softplus"][impl]("cpu")
    if not ok:
        pytest.skip(f"{impl} implementation unavailable here: {why}")


@pytest.fixture(params=CPU_IMPLS)
def impl(request, monkeypatch):
    """Force one implementation for the whole test (forward and backward)."""
    import gconv.ops  # noqa: F401  (registers the ops)
    _available(request.param, monkeypatch)
    with B.use_backend(request.param):
        yield request.param


@pytest.fixture(params=("save", "recompute"))
def strategy(request, monkeypatch):
    """EE-head backward: saved B×N tensors or recomputation from z."""
    monkeypatch.setenv("GCONV_EE_HEAD_BACKWARD", request.param)
    return request.param
