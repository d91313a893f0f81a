"""One BLAS for the heavy work: SciPy's (OpenBLAS), called on C-ordered arrays without copies.

NumPy and SciPy wheels each bundle their own OpenBLAS, and torch its OpenMP runtime; when two
thread pools alternate on a small machine, the idle one's spinning threads slow the other down by
orders of magnitude (measured here: a 512 × 512 ``dpotrf`` took 1 s instead of 2 ms right after a
NumPy GEMM).  The certification code therefore calls SciPy's BLAS / LAPACK for every heavy product
and factorisation, and :func:`quiet_other_pools` keeps the other pools at one thread meanwhile.
All products here are conventional (non-Strassen) GEMM / TRSM / TRMM — the error model of the
certificates (docs/certification.md §1).
"""
from __future__ import annotations

import contextlib

import numpy as np
from scipy.linalg import blas as _b


def mm_nt(A: np.ndarray, B: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A @ B.T for C-ordered float64 A (m × k), B (p × k); result C-ordered (m × p), into ``out``."""
    A = np.ascontiguousarray(A, dtype=np.float64)
    B = np.ascontiguousarray(B, dtype=np.float64)
    m, p = A.shape[0], B.shape[0]
    if out is None:
        out = np.empty((m, p))
    if m == 0 or p == 0:
        return out
    if A.shape[1] == 0:
        out[...] = 0
        return out
    # Cᵀ (F-order p × m) = B Aᵀ = (B.T)ᵀ (A.T)
    r = _b.dgemm(1.0, B.T, A.T, beta=0.0, c=out.T, trans_a=1, overwrite_c=1)
    if not np.shares_memory(r, out):
        out[...] = r.T
    return out


def mm(A: np.ndarray, B: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A @ B for C-ordered float64 A (m × k), B (k × p); result C-ordered (m × p)."""
    A = np.ascontiguousarray(A, dtype=np.float64)
    B = np.ascontiguousarray(B, dtype=np.float64)
    m, p = A.shape[0], B.shape[1]
    if out is None:
        out = np.empty((m, p))
    if m == 0 or p == 0:
        return out
    if A.shape[1] == 0:
        out[...] = 0
        return out
    # Cᵀ = Bᵀ Aᵀ with B.T (p × k) and A.T (k × m) F-ordered
    r = _b.dgemm(1.0, B.T, A.T, beta=0.0, c=out.T, overwrite_c=1)
    if not np.shares_memory(r, out):
        out[...] = r.T
    return out


_CTL = None


def _controller():
    global _CTL
    if _CTL is None:
        from threadpoolctl import ThreadpoolController
        _CTL = ThreadpoolController()
    return _CTL


@contextlib.contextmanager
def quiet_other_pools():
    """Limit NumPy's BLAS pool and torch's intra-op pool to one thread while SciPy's BLAS works."""
    restore = []
    try:
        ctl = _controller()
        for lib in ctl.lib_controllers:
            fp = getattr(lib, "filepath", "") or ""
            if "scipy.libs" in fp or "scipy/.libs" in fp:
                continue
            if lib.num_threads != 1:
                restore.append((lib, lib.num_threads))
                lib.set_num_threads(1)
    except Exception:
        pass
    import torch
    tn = torch.get_num_threads()
    if tn != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if tn != 1:
            torch.set_num_threads(tn)
        for lib, k in restore:
            try:
                lib.set_num_threads(k)
            except Exception:
                pass
