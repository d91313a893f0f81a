"""Implementation registry: which kernel runs each op on each device, and why the others do not.

Every op has up to four implementations, tried in this order for a device:

=========  ==============================================  ==========================
name       what                                            devices
=========  ==============================================  ==========================
cuda       CUDA C++ kernels in ``gconv._C_cuda``            cuda
triton     Triton kernels (GPU; CPU only under             cuda (cpu with
           ``TRITON_INTERPRET=1``, for tests)              TRITON_INTERPRET=1)
cpp        C++ CPU kernels in ``gconv._C``                  cpu
torch      the plain-PyTorch reference (always works)      any
=========  ==============================================  ==========================

``GCONV_BACKEND=<name>`` or :func:`use_backend` forces one (an error if it cannot serve the
device); ``gconv.backends()`` reports the active choice per device and the reason for every
implementation that is not available.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
from typing import Callable

IMPLEMENTATIONS = ("cuda", "triton", "cpp", "torch")
_CHECKS: dict[str, dict[str, Callable[[str], tuple[bool, str]]]] = {}
_forced = threading.local()


# ---------------------------------------------------------------- native modules
@functools.lru_cache(maxsize=None)
def _load(modname: str):
    import torch  # noqa: F401  (loads libc10 / libtorch that the extension links against)
    try:
        return importlib.import_module(modname), "built"
    except ImportError as exc:
        return None, f"{modname} is not built ({exc}); reinstall with `pip install --no-build-isolation .`"


def native_cpu():
    """The C++ CPU extension module ``gconv._C`` or None."""
    return _load("gconv._C")[0]


def native_cuda():
    """The CUDA extension module ``gconv._C_cuda`` or None."""
    return _load("gconv._C_cuda")[0]


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _triton_import():
    try:
        import triton  # noqa: F401
        return True, f"triton {triton.__version__}"
    except Exception as exc:
        return False, f"triton is not importable ({exc})"


def _cuda_device_present() -> bool:
    import torch
    return torch.cuda.is_available()


# ---------------------------------------------------------------- generic checks per implementation
def _has_native_op(namespace: str, symbol: str) -> bool:
    import torch
    try:
        getattr(getattr(torch.ops, namespace), symbol)
        return True
    except (AttributeError, RuntimeError):
        return False


def check_cuda(device_type: str, symbol: str | None = None) -> tuple[bool, str]:
    """``symbol``: the op's name under ``torch.ops.gconv_cuda``."""
    if device_type != "cuda":
        return False, "CUDA kernels serve CUDA tensors only"
    import torch
    if torch.version.cuda is None:
        return False, "torch is a CPU build"
    mod = native_cuda()
    if mod is None:
        return False, _load("gconv._C_cuda")[1]
    if symbol is not None and not _has_native_op("gconv_cuda", symbol):
        return False, f"torch.ops.gconv_cuda has no {symbol} (stale build?)"
    if not _cuda_device_present():
        return False, "no CUDA device is visible"
    return True, "gconv._C_cuda"


def check_triton(device_type: str) -> tuple[bool, str]:
    ok, why = _triton_import()
    if not ok:
        return False, why
    if device_type == "cuda":
        return (True, why) if _cuda_device_present() else (False, "no CUDA device is visible")
    if device_type == "cpu":
        if triton_interpreting():
            return True, why + " (interpreter, TRITON_INTERPRET=1)"
        return False, "Triton runs CPU tensors only under TRITON_INTERPRET=1 (tests); the C++ kernel or reference is used"
    return False, f"no Triton path for device type {device_type!r}"


def check_cpp(device_type: str, symbol: str | None = None) -> tuple[bool, str]:
    """``symbol``: the op's name under ``torch.ops.gconv_cpu``."""
    if device_type != "cpu":
        return False, "C++ kernels serve CPU tensors only"
    mod = native_cpu()
    if mod is None:
        return False, _load("gconv._C")[1]
    if symbol is not None and not _has_native_op("gconv_cpu", symbol):
        return False, f"torch.ops.gconv_cpu has no {symbol} (stale build?)"
    return True, "gconv._C"


def check_torch(device_type: str) -> tuple[bool, str]:
    return True, "plain-PyTorch reference"


# ---------------------------------------------------------------- registry
def register(op: str, impl: str, check: Callable[[str], tuple[bool, str]]) -> None:
    """Register ``check(device_type) -> (available, reason)`` for ``impl`` of ``op``."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {impl!r}; expected one of {IMPLEMENTATIONS}")
    _CHECKS.setdefault(op, {})[impl] = check


def forced_backend() -> str | None:
    name = getattr(_forced, "name", None) or os.environ.get("GCONV_BACKEND") or None
    if name is not None and name not in IMPLEMENTATIONS:
        raise ValueError(f"GCONV_BACKEND={name!r} is not one of {IMPLEMENTATIONS}")
    return name


@contextlib.contextmanager
def use_backend(name: str | None):
    """Force implementation ``name`` (or None for automatic choice) inside the block (this thread)."""
    if name is not None and name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {name!r}; expected one of {IMPLEMENTATIONS}")
    prev = getattr(_forced, "name", None)
    _forced.name = name
    try:
        yield
    finally:
        _forced.name = prev


def select(op: str, device_type: str) -> str:
    """The implementation of ``op`` that serves tensors on ``device_type`` now."""
    checks = _CHECKS.get(op)
    if checks is None:
        raise KeyError(f"op {op!r} is not registered")
    forced = forced_backend()
    if forced is not None:
        check = checks.get(forced)
        if check is None:
            raise RuntimeError(f"gconv op {op!r} has no {forced!r} implementation")
        ok, why = check(device_type)
        if not ok:
            raise RuntimeError(f"gconv op {op!r}: backend {forced!r} was forced but is unavailable "
                               f"on {device_type}: {why}")
        return forced
    for impl in IMPLEMENTATIONS:
        check = checks.get(impl)
        if check is not None and check(device_type)[0]:
            return impl
    return "torch"


def backends(device_types=("cpu", "cuda")) -> dict:
    """Per op: the active implementation per device type, and each implementation's status.

    Example::

        >>> gconv.backends()["softplus"]
        {'active': {'cpu': 'cpp', 'cuda': 'torch'},
         'implementations': {'cuda': 'unavailable: torch is a CPU build', 'triton': ..., ...}}
    """
    # importing the ops registers them
    importlib.import_module("gconv.ops")
    out = {}
    for op, checks in sorted(_CHECKS.items()):
        status = {}
        for impl in IMPLEMENTATIONS:
            if impl not in checks:
                status[impl] = "not implemented for this op"
                continue
            reasons = []
            for dt in device_types:
                ok, why = checks[impl](dt)
                reasons.append((dt, ok, why))
            oks = [f"{dt}: {why}" for dt, ok, why in reasons if ok]
            status[impl] = ("available (" + "; ".join(oks) + ")") if oks else \
                "unavailable: " + "; ".join(f"{dt}: {why}" for dt, _, why in reasons)
        active = {}
        for dt in device_types:
            try:
                active[dt] = select(op, dt)
            except RuntimeError as exc:
                active[dt] = f"error: {exc}"
        out[op] = {"active": active, "implementations": status}
    return out
