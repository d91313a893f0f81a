"""``matrix_rank`` with numpy.linalg.matrix_rank semantics (design notes §4).

* Anything that can be held in memory (a tensor, an array, a stack of matrices, or an implicit matrix
  whose float64 form fits ``max_bytes``) is handed to ``numpy.linalg.matrix_rank`` itself — exact
  parity by construction: rank = #{σ_i > tol}, tol = S.max()·max(M, N)·eps(dtype) by default,
  ``tol`` absolute, ``rtol`` relative (numpy ≥ 2), ``hermitian`` via eigenvalues.  Torch tensors go to
  numpy on the CPU in their own precision (float16 / bfloat16, which numpy's LAPACK does not take,
  are upcast to float32; eps is then float32's).
* Beyond that (an implicit matrix too large to hold), the singular values are not available; the
  answer comes from :func:`certify_full_row_rank`: min(M, N) when full rank is certified with
  σ_min ≥ the numpy threshold computed from the rigorous σ_max bound (then numpy would agree), and
  an error otherwise — gconv never guesses a rank.
"""
from __future__ import annotations

import inspect

import numpy as np
import torch

from gconv._utils import format_bytes, parse_bytes


def _to_numpy(A):
    if isinstance(A, torch.Tensor):
        t = A.detach().cpu()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.to(torch.float32)
        return t.numpy()
    return np.asarray(A)


def _np_matrix_rank(a, tol, rtol, hermitian):
    kw = {}
    if rtol is not None:
        if "rtol" in inspect.signature(np.linalg.matrix_rank).parameters:
            kw["rtol"] = rtol
        else:  # numpy < 2: the same rule by hand
            if tol is not None:
                raise ValueError("`tol` and `rtol` can't be both set.")
            S = np.linalg.svd(a, compute_uv=False, hermitian=hermitian)
            return np.count_nonzero(S > S.max(axis=-1, keepdims=True) * np.asarray(rtol)[..., None], axis=-1)
    return np.linalg.matrix_rank(a, tol=tol, hermitian=hermitian, **kw)


def matrix_rank(A, tol=None, rtol=None, hermitian: bool = False, *, max_bytes="2GiB", **certify_kw):
    """numpy.linalg.matrix_rank(A, tol, hermitian, rtol=rtol) — see the module docstring."""
    from gconv.linalg.implicit import DenseMatrix, ImplicitMatrix, as_implicit
    if isinstance(A, (torch.Tensor, np.ndarray)) or not (isinstance(A, ImplicitMatrix) or hasattr(A, "shape")):
        a = _to_numpy(A)
        return _np_matrix_rank(a, tol, rtol, hermitian)
    src = as_implicit(A)
    if isinstance(src, DenseMatrix):
        return _np_matrix_rank(_to_numpy(src.array), tol, rtol, hermitian)
    n, D = src.shape
    lim = parse_bytes(max_bytes)
    if lim is None or 8 * n * D <= lim:
        return _np_matrix_rank(src.to_dense(), tol, rtol, hermitian)
    if hermitian:
        raise ValueError("matrix_rank(hermitian=True) needs the matrix in memory")
    # streaming: only full rank can be answered, and only with a proof that numpy would agree
    from gconv.linalg.operators import Transposed
    from gconv.linalg.rank import certify_full_row_rank
    target = src if n <= D else Transposed(src)
    cert = certify_full_row_rank(target, **certify_kw)
    m = min(n, D)
    eps = np.finfo(np.float64).eps
    if cert.certified_full_rank and cert.sigma_min_lower is not None and cert.sigma_max_upper is not None:
        if tol is not None:
            thr = float(tol)
        else:
            r = float(rtol) if rtol is not None else max(n, D) * eps
            thr = cert.sigma_max_upper * r
        if cert.sigma_min_lower > thr:
            return m
    raise RuntimeError(
        f"matrix_rank: the {n} × {D} matrix ({format_bytes(8 * n * D)} in float64) exceeds max_bytes={max_bytes} "
        f"and its rank cannot be decided without its singular values: certify_full_row_rank says "
        f"{cert.status.value} ({cert.reason}). Raise max_bytes to compute the SVD, or use the certificate.")
