"""softplus_ζ(z) = log(1 + exp(ζz))/ζ   (design notes §2.1; ζ = 100 in every paper).

One file, four implementations of the same two formulas (Liger-Kernel style):

    forward   y  = max(z, 0) + log1p(exp(−|ζz|))/ζ
    backward  dz = dy · sigmoid(ζz),  sigmoid(t) = 1/(1+e) for t ≥ 0 and e/(1+e) for t < 0, e = exp(−|t|)

This form never overflows — ``max(z, 0)`` is exact and ``exp`` only sees non-positive arguments — so
the result is finite and accurate for every finite input (|ζz| ≥ 1e4, even ζz beyond the float
range), and the limits hold at ±inf: softplus(+inf) = +inf with gradient 1, softplus(−inf) = 0 with
gradient 0. NaN propagates. Forward is one pass that saves only the input; backward is one pass
reading the incoming gradient and the input.

Implementations, chosen per device by :mod:`gconv._backends` (cuda → triton → cpp → torch):

* ``cuda``   csrc/cuda/ops_softplus.cu  (vectorised 16-byte loads, 64-bit indexing)
* ``triton`` the kernels below (GPU; CPU tensors under ``TRITON_INTERPRET=1`` for the tests)
* ``cpp``    csrc/cpu/ops_softplus.cpp  (OpenMP)
* ``torch``  :func:`softplus_reference` — CPU fallback and the tests' oracle

Dtypes: float32 and float64 compute in their own precision. float16 and bfloat16 are computed in
float32 and rounded once to the input dtype — on GPU and, by the same policy, on CPU (C++ kernel and
reference alike), so CPU and GPU give the same half-precision results up to libm differences.

``torch.ops.gconv.softplus`` is a ``torch.library`` custom op (fake kernel + autograd, double
backward included), so ``torch.compile(fullgraph=True)`` traces it; eager calls run the same
kernels through a plain autograd.Function (less per-call overhead). Inside torch.func transforms
(vmap, jvp, jacfwd, ...) or forward-mode AD the differentiable reference runs instead.
"""
from __future__ import annotations

import torch

from gconv import _backends as B
from gconv.ops._common import (HAS_TRITON, check_float_tensor, check_zeta, choose, forced_backend_name,
                               is_dense, launch, native_op, split_f64, use_reference)

if HAS_TRITON:
    import triton
    import triton.language as tl

_OP = "softplus"


# ====================================================================== reference
def softplus_reference(z: torch.Tensor, zeta: float = 100.0) -> torch.Tensor:
    """Plain-PyTorch softplus_ζ (CPU fallback and test oracle); autograd through torch ops.

    y = max(z, 0) + log1p(exp(−|ζz|))/ζ (design notes §2.1, rewritten so that ζz never overflows).
    float16 / bfloat16 are computed in float32 and rounded once.
    """
    zc = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    y = torch.clamp_min(zc, 0) + torch.log1p(torch.exp(-(zc * zeta).abs())) / zeta
    return y.to(z.dtype)


def _softplus_grad_reference(grad: torch.Tensor, z: torch.Tensor, zeta: float) -> torch.Tensor:
    """dz = dy · sigmoid(ζz) (torch.sigmoid is already stable at both tails)."""
    half = z.dtype in (torch.float16, torch.bfloat16)
    s = torch.sigmoid(z.float() * zeta if half else z * zeta)
    return (grad.float() * s).to(z.dtype) if half else grad * s


# ====================================================================== Triton kernels
if HAS_TRITON:
    @triton.jit
    def _softplus_fwd_kernel(z_ptr, y_ptr, n, zeta_hi, zeta_mid, zeta_lo,
                             F64: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        z = tl.load(z_ptr + offs, mask=mask, other=0.0)
        if F64:
            zeta = tl.cast(zeta_hi, tl.float64) + tl.cast(zeta_mid, tl.float64) + tl.cast(zeta_lo, tl.float64)
            z = z.to(tl.float64)
        else:
            zeta = tl.cast(zeta_hi, tl.float32)
            z = z.to(tl.float32)
        e = tl.exp(-tl.abs(z * zeta))
        u = 1.0 + e
        # log1p(e) without a log1p intrinsic (Goldberg): exact to a few ulps for e in [0, 1]
        d = tl.where(u == 1.0, 1.0, u - 1.0)
        l1p = tl.where(u == 1.0, e, tl.log(u) * (e / d))
        y = tl.where(z > 0, z, 0.0) + l1p / zeta
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _softplus_bwd_kernel(g_ptr, z_ptr, dz_ptr, n, zeta_hi, zeta_mid, zeta_lo,
                             F64: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        z = tl.load(z_ptr + offs, mask=mask, other=0.0)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0)
        if F64:
            zeta = tl.cast(zeta_hi, tl.float64) + tl.cast(zeta_mid, tl.float64) + tl.cast(zeta_lo, tl.float64)
            z = z.to(tl.float64)
            g = g.to(tl.float64)
        else:
            zeta = tl.cast(zeta_hi, tl.float32)
            z = z.to(tl.float32)
            g = g.to(tl.float32)
        t = z * zeta
        e = tl.exp(-tl.abs(t))
        s = tl.where(t >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        tl.store(dz_ptr + offs, (g * s).to(dz_ptr.dtype.element_ty), mask=mask)


_BLOCK = 1024


def _softplus_fwd_triton(z: torch.Tensor, zeta: float) -> torch.Tensor:
    y = torch.empty_like(z)
    n = z.numel()
    if n:
        launch(_softplus_fwd_kernel, (triton.cdiv(n, _BLOCK),), z, y, n, *split_f64(zeta),
               F64=z.dtype == torch.float64, BLOCK=_BLOCK)
    return y


def _softplus_bwd_triton(grad: torch.Tensor, z: torch.Tensor, zeta: float) -> torch.Tensor:
    dz = torch.empty_like(z)
    n = z.numel()
    if n:
        launch(_softplus_bwd_kernel, (triton.cdiv(n, _BLOCK),), grad, z, dz, n, *split_f64(zeta),
               F64=z.dtype == torch.float64, BLOCK=_BLOCK)
    return dz


# ====================================================================== implementations
_FWD = {
    "torch": softplus_reference,
    "triton": _softplus_fwd_triton,
    "cpp": lambda z, zeta: native_op("gconv_cpu", "softplus_fwd")(z, zeta),
    "cuda": lambda z, zeta: native_op("gconv_cuda", "softplus_fwd")(z, zeta),
}
_BWD = {
    "torch": _softplus_grad_reference,
    "triton": _softplus_bwd_triton,
    "cpp": lambda g, z, zeta: native_op("gconv_cpu", "softplus_bwd")(g, z, zeta),
    "cuda": lambda g, z, zeta: native_op("gconv_cuda", "softplus_bwd")(g, z, zeta),
}

B.register(_OP, "cuda", lambda dt: B.check_cuda(dt, "softplus_fwd"))
B.register(_OP, "triton", B.check_triton)
B.register(_OP, "cpp", lambda dt: B.check_cpp(dt, "softplus_fwd"))
B.register(_OP, "torch", B.check_torch)


def _dense(t: torch.Tensor) -> torch.Tensor:
    return t if is_dense(t) else t.contiguous()


def _pair(grad: torch.Tensor, z: torch.Tensor):
    """grad and z with identical dense strides (elementwise over storage), copying only if needed."""
    z = _dense(z)
    if grad.stride() != z.stride() or not is_dense(grad):
        grad = grad.contiguous()
        z = z.contiguous()
    return grad, z


# ====================================================================== custom ops
@torch.library.custom_op("gconv::softplus", mutates_args=())
def _softplus_op(z: torch.Tensor, zeta: float) -> torch.Tensor:
    return _FWD[choose(_OP, z.device.type)](_dense(z), zeta)


@_softplus_op.register_fake
def _(z, zeta):
    return torch.empty_like(z) if is_dense(z) else z.new_empty(z.shape)


@torch.library.custom_op("gconv::softplus_backward", mutates_args=())
def _softplus_backward_op(grad: torch.Tensor, z: torch.Tensor, zeta: float, backend: str) -> torch.Tensor:
    grad, z = _pair(grad, z)
    return _BWD[choose(_OP, z.device.type, backend)](grad, z, zeta)


@_softplus_backward_op.register_fake
def _(grad, z, zeta, backend):
    grad, z = _pair(grad, z)
    return torch.empty_like(z)


def _setup(ctx, inputs, output):
    z, zeta = inputs
    ctx.save_for_backward(z)
    ctx.zeta = zeta
    # use_backend() is thread-local and the autograd engine may run backward on another thread:
    # remember a forced implementation so forward and backward use the same one.
    ctx.backend = forced_backend_name()


def _backward(ctx, grad):
    (z,) = ctx.saved_tensors
    return torch.ops.gconv.softplus_backward(grad, z, ctx.zeta, ctx.backend), None


_softplus_op.register_autograd(_backward, setup_context=_setup)


def _setup_bb(ctx, inputs, output):
    grad, z, zeta, _backend = inputs
    ctx.save_for_backward(grad, z)
    ctx.zeta = zeta


def _backward_bb(ctx, gg):
    """Double backward: d(dz)/d(grad) = sigmoid(ζz); d(dz)/dz = grad·ζ·s(1−s) (differentiable)."""
    grad, z = ctx.saved_tensors
    s = torch.sigmoid(z * ctx.zeta)
    g_grad = gg * s if ctx.needs_input_grad[0] else None
    g_z = gg * grad * ctx.zeta * s * (1 - s) if ctx.needs_input_grad[1] else None
    return g_grad, g_z, None, None


_softplus_backward_op.register_autograd(_backward_bb, setup_context=_setup_bb)


# ====================================================================== eager fast path
class _SoftplusFunction(torch.autograd.Function):
    """The same kernels and formulas as the custom op, without the custom-op dispatch layers.

    Eager calls take this path (~3× less per-call overhead, which matters for the many small
    activations of a ResNet); ``torch.compile`` traces the custom op instead.
    """

    @staticmethod
    def forward(ctx, z, zeta):
        ctx.save_for_backward(z)
        ctx.zeta = zeta
        ctx.backend = forced_backend_name()
        return _FWD[choose(_OP, z.device.type)](_dense(z), zeta)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        if torch.is_grad_enabled():   # create_graph: the custom op has a double-backward formula
            return torch.ops.gconv.softplus_backward(grad, z, ctx.zeta, ctx.backend), None
        g, zz = _pair(grad, z)
        return _BWD[choose(_OP, z.device.type, ctx.backend)](g, zz, ctx.zeta), None


# ====================================================================== public API
def softplus(z: torch.Tensor, zeta: float = 100.0) -> torch.Tensor:
    """softplus_ζ(z) = log(1 + exp(ζz))/ζ elementwise (design notes §2.1); gradient sigmoid(ζz).

    Args:
        z: floating-point tensor of any shape, layout and device (float16 / bfloat16 computed in
           float32).
        zeta: the sharpness ζ > 0 (100 in the papers; ζ → ∞ gives ReLU).
    """
    check_float_tensor(z, "z", "softplus")
    zeta = check_zeta(zeta, "softplus: zeta")
    if torch.compiler.is_compiling():
        return torch.ops.gconv.softplus(z, zeta)
    if use_reference(z):
        return softplus_reference(z, zeta)
    return _SoftplusFunction.apply(z, zeta)
