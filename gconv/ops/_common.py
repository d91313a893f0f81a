"""Private helpers shared by the fused ops: input checks, layouts, Triton launching, dispatch.

Kept small on purpose: each op file holds its own reference, kernels and autograd (Liger style);
only what is identical for every op lives here.
"""
from __future__ import annotations

import contextlib
import math

import torch

from gconv import _backends as B

try:  # Triton is optional: without it the op falls back to the C++ kernels or the reference.
    import triton
    import triton.language as tl  # noqa: F401  (re-exported for the op files)
    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    triton = None
    tl = None
    HAS_TRITON = False

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ------------------------------------------------------------------ validation
def check_zeta(zeta, what: str) -> float:
    """A positive finite Python number (ζ of softplus, ζ′ of the EE gate)."""
    if isinstance(zeta, torch.Tensor):
        raise TypeError(f"{what} must be a Python number, got a tensor (use float(...))")
    try:
        z = float(zeta)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a positive finite number, got {zeta!r}") from None
    if not (z > 0 and math.isfinite(z)):
        raise ValueError(f"{what} must be a positive finite number, got {zeta!r}")
    return z


def check_float_tensor(t, what: str, op: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {what} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {what} must be a floating-point tensor (float16, bfloat16, float32 or "
                        f"float64), got dtype {t.dtype}")


# ------------------------------------------------------------------ layouts
def is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense in *some* dimension order (contiguous, channels_last, transposed...).

    Elementwise kernels run over the storage of such a tensor directly and return ``empty_like``
    (same strides), so e.g. channels_last activations are never copied.
    """
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


# ------------------------------------------------------------------ dispatch
def use_reference(*tensors) -> bool:
    """True inside torch.func transforms (vmap / grad / jvp / jacrev ...) or forward-mode AD.

    The custom ops define reverse-mode autograd only; under a functorch transform or with dual
    tensors the differentiable plain-PyTorch reference runs instead, so that jvp / jacfwd / vmap
    give correct answers rather than silently zero tangents.
    """
    if torch.compiler.is_compiling():
        return False
    if torch.autograd.forward_ad._current_level >= 0:
        return True
    is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    return any(t is not None and is_wrapped(t) for t in tensors)


def forced_backend_name() -> str:
    """The forced implementation as a string for a custom op's ``backend`` argument ('' = choose)."""
    return B.forced_backend() or ""


def choose(op: str, device_type: str, backend: str = "") -> str:
    """The implementation to run now; ``backend`` (captured at forward time) wins if given."""
    if backend:
        with B.use_backend(backend):
            return B.select(op, device_type)
    return B.select(op, device_type)


# ------------------------------------------------------------------ Triton launching
_INTERPRETED: dict = {}


def launch(kernel, grid, *args, **kwargs):
    """Launch a ``@triton.jit`` kernel; under ``TRITON_INTERPRET=1`` run it in the interpreter.

    Triton decides between compiling and interpreting when the decorator runs (at import), so
    kernels imported before the variable was set are wrapped here instead — this is what lets the
    tests run every Triton kernel on CPU tensors in the same process as the other backends.
    """
    if B.triton_interpreting() and not type(kernel).__name__ == "InterpretedFunction":
        from triton.runtime.interpreter import InterpretedFunction
        k = _INTERPRETED.get(kernel)
        if k is None:
            k = _INTERPRETED[kernel] = InterpretedFunction(kernel.fn)
        with _interpreted_stdlib():
            return k[grid](*args, **kwargs)
    return kernel[grid](*args, **kwargs)


_STDLIB_SWAP: dict = {}


@contextlib.contextmanager
def _interpreted_stdlib():
    """Swap triton.language's own @jit helpers (tl.zeros, tl.sum, ...) for interpreted versions.

    When Triton was imported without TRITON_INTERPRET=1 those helpers are compiled-mode
    JITFunctions, which the interpreter cannot call; this reproduces, for the duration of one
    launch, the state an import under TRITON_INTERPRET=1 would have produced.
    """
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction
    mods = [tl, tl.core, tl.standard, tl.math]
    if not _STDLIB_SWAP:
        for mod in mods:
            for name, val in list(vars(mod).items()):
                if isinstance(val, JITFunction):
                    _STDLIB_SWAP[(mod, name)] = (val, InterpretedFunction(val.fn))
    for (mod, name), (_orig, interp) in _STDLIB_SWAP.items():
        setattr(mod, name, interp)
    try:
        yield
    finally:
        for (mod, name), (orig, _interp) in _STDLIB_SWAP.items():
            setattr(mod, name, orig)


def split_f64(x: float) -> tuple[float, float, float]:
    """x = hi + mid + lo with three float32 values (Triton passes Python floats as fp32 scalars).

    fp64 kernels rebuild ζ exactly from the three parts; fp32 kernels use ``hi``.
    """
    import numpy as np
    hi = float(np.float32(x))
    mid = float(np.float32(x - hi))
    lo = float(np.float32(x - hi - mid))
    return hi, mid, lo


def native_op(namespace: str, name: str):
    """``torch.ops.<namespace>.<name>`` after loading the extension that defines it."""
    (B.native_cpu if namespace == "gconv_cpu" else B.native_cuda)()
    return getattr(getattr(torch.ops, namespace), name)
