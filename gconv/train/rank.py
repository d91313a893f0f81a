"""rank K(w), K = J Jᵀ (the NTK Gram over all parameters) — the check of seed 003's second phase.

* :func:`ntk_rank` (default): ``gconv.jacobian.ntk_gram`` (streamed, any size the budget allows) and
  ``gconv.linalg.matrix_rank(K, hermitian=True)`` (numpy semantics), imported lazily.
* :func:`dense_ntk_rank`: a plain-torch reference for tiny problems — the full Jacobian by
  ``torch.func.jacrev`` in float64 and ``numpy.linalg.matrix_rank``; used by the tests and usable
  as ``TwoPhase(rank_check=dense_ntk_rank)`` when n·m_y·d is small.

Both take ``(model, data, params)`` with ``params`` a list of parameter names (all of w, frozen ones
included) and evaluate the model as it is (TwoPhase puts it in eval mode for the check).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

DENSE_MAX_ENTRIES = 50_000_000     # n·m_y·d: 400 MB of float64


def ntk_rank(model: nn.Module, data, params=None, *, dtype: torch.dtype | None = torch.float64) -> int:
    """rank K(w) with gconv.jacobian.ntk_gram + gconv.linalg.matrix_rank(hermitian=True).

    The Gram is formed in ``dtype`` (default float64, on a copy of the model and data): a float32
    Gram squares the condition number of J in single precision and under-counts the rank of
    perfectly healthy networks (seen on an 8-sample MLP: float32 rank 15, float64 rank 16 = n·m_y).
    """
    try:
        from gconv.jacobian import ntk_gram
        from gconv.linalg import matrix_rank
    except ImportError as exc:
        raise ImportError("the default rank check needs gconv.jacobian.ntk_gram and gconv.linalg.matrix_rank "
                          f"({exc}); pass rank_check=gconv.train.dense_ntk_rank for small problems, or "
                          "rank_check=False") from exc
    from gconv.data.source import as_data_source
    X, _ = as_data_source(data).tensors()
    if dtype is not None and any(p.is_floating_point() and p.dtype != dtype for p in model.parameters()):
        model = copy.deepcopy(model).to(dtype)
    if dtype is not None and X.is_floating_point():
        X = X.to(dtype)
    K = ntk_gram(model, X, params=params, method="auto")
    if not (torch.is_tensor(K) or isinstance(K, np.ndarray)):
        K = next((getattr(K, a) for a in ("gram", "K", "matrix") if hasattr(K, a)), K)
    r = matrix_rank(K, hermitian=True)
    return int(getattr(r, "rank", r))


def dense_jacobian(model: nn.Module, X: torch.Tensor, params=None, dtype=torch.float64) -> torch.Tensor:
    """J = ∂vec(f_X)/∂w ∈ R^{(n·m_y)×d} (rows sample-major) by ``torch.func.jacrev``, in ``dtype``.

    The model is evaluated on the whole batch at once, in its current train/eval mode."""
    from torch.func import functional_call, jacrev
    named = dict(model.named_parameters())
    names = list(named) if params is None else list(params)
    missing = [nm for nm in names if nm not in named]
    if missing:
        raise ValueError(f"dense_jacobian: unknown parameter names {missing}")
    P = {nm: named[nm].detach().to(dtype) for nm in names}
    rest = {nm: p.detach().to(dtype) for nm, p in named.items() if nm not in P}
    bufs = {nm: (b.to(dtype) if b.is_floating_point() else b) for nm, b in model.named_buffers()}
    x = X.to(dtype) if X.is_floating_point() else X

    def f(p):
        out = functional_call(model, {**rest, **p, **bufs}, (x,))
        return out.reshape(out.shape[0], -1)
    jac = jacrev(f)(P)
    n, my = jac[names[0]].shape[:2]
    return torch.cat([jac[nm].reshape(n * my, -1) for nm in names], dim=1)


def dense_ntk_rank(model: nn.Module, data, params=None) -> int:
    """rank K(w) from the dense float64 Jacobian (numpy.linalg.matrix_rank of K = J Jᵀ, hermitian)."""
    from gconv.data.source import as_data_source
    X, _ = as_data_source(data).tensors()
    d = sum(p.numel() for nm, p in model.named_parameters() if params is None or nm in set(params))
    with torch.no_grad():
        my = model(X[:1]).reshape(1, -1).shape[1]
    if X.shape[0] * my * d > DENSE_MAX_ENTRIES:
        raise ValueError(f"dense_ntk_rank: J would be {X.shape[0] * my} × {d} (> {DENSE_MAX_ENTRIES:,} entries); "
                         "use gconv.train.ntk_rank (streamed) or fewer samples")
    J = dense_jacobian(model, X, params)
    K = (J @ J.t()).numpy()
    return int(np.linalg.matrix_rank(K, hermitian=True))
