"""Seed 003, Algorithm 1, second phase: the NTK rank is preserved, rank K(w^k) ≥ rank K(w^τ), K = J Jᵀ.

rank K = rank J, so the check works on the Jacobians J(w) ∈ R^{(n·m_y)×d} (streamed row blocks of
:class:`gconv.jacobian.Jacobian`, in float64) with :func:`gconv.linalg.certify_full_row_rank`:

* J(w^k) certified of full row rank N = n·m_y  ⇒ rank K(w^k) = N ≥ rank K(w^τ): ``VERIFIED``;
* J(w^k) certified rank deficient and J(w^τ) certified full rank ⇒ rank K(w^k) < N = rank K(w^τ):
  ``NOT_VERIFIED``;
* otherwise ``INCONCLUSIVE``, with the numerical ranks (gconv.linalg.matrix_rank of K, numpy's
  semantics) of both in ``details`` — a numerical rank is not a proof.
"""
from __future__ import annotations

import copy
import time

import torch
from torch import nn

from gconv._utils import environment
from gconv.jacobian import Jacobian
from gconv.linalg import RowBlocks, certify_full_row_rank
from gconv.verify._common import data_summary, progress_default, rank_bounds
from gconv.verify.features import model_summary
from gconv.verify.report import VerificationReport, Verdict

PAPER = "seed 003 (Kawaguchi, Sun)"
EQUATION = "Algorithm 1, phase 2: rank K(w^k) >= rank K(w^tau), K = J J^T"
STATEMENT = "rank K(w^k) >= rank K(w^tau)"


def _as_model(model: nn.Module, reference) -> nn.Module:
    if isinstance(reference, nn.Module):
        return reference
    if isinstance(reference, dict):
        m = copy.deepcopy(model)
        missing, unexpected = m.load_state_dict(reference, strict=False)
        if unexpected:
            raise ValueError(f"reference state dict has parameters the model lacks: {unexpected[:5]}")
        return m
    raise TypeError(f"reference must be an nn.Module at w^tau or its state_dict, got {type(reference).__name__}")


def _jacobian_matrix(model, X, params, memory_budget):
    m64 = copy.deepcopy(model).to(torch.float64)
    X64 = X.to(torch.float64) if X.is_floating_point() else X
    J = Jacobian(m64, X64, params, memory_budget=memory_budget)
    return J, RowBlocks(J.row_blocks(), n=J.shape[0], D=J.shape[1], name="Jacobian rows")


def ntk_rank_preserved(model, data, reference, *, params=None, seed: int | None = None, memory_budget=None,
                       numerical_ranks: bool | None = None, progress: bool | None = None,
                       **certify_options) -> VerificationReport:
    """Verify rank K(w^k) ≥ rank K(w^τ) for ``model`` (at w^k) against ``reference`` (a model at w^τ, or
    the state_dict of w^τ for ``model``'s architecture), on ``data``.

    ``params``: the parameters w (default all trainable — the NTK over all layers, even those the
    second phase freezes).  Both Jacobians are evaluated in float64 on copies, in the models' current
    train/eval modes.  ``numerical_ranks``: also compute matrix_rank(K) for both (default: when the
    verdict is not certified, or when n·m_y ≤ 2,000).
    """
    t0 = time.perf_counter()
    progress = progress_default(progress)
    ref = _as_model(model, reference)
    inputs = data_summary(data)
    from gconv.data.source import as_data_source
    X, _ = as_data_source(data).tensors()
    timings: dict = {}
    t = time.perf_counter()
    Jk, Ak = _jacobian_matrix(model, X, params, memory_budget)
    timings["setup"] = time.perf_counter() - t
    N, d = Jk.shape
    inputs.update(model=model_summary(model), seed=seed, params="all trainable" if params is None else str(params),
                  dtype="float64", device=str(Jk.device), matrix_shape=[N, d], m_y=Jk.m_y)
    cert_k = certify_full_row_rank(Ak, memory_budget=memory_budget, progress=progress, **certify_options)
    timings["certify_k"] = cert_k.timings.get("total", 0.0)
    cert_tau = None
    if cert_k.certified_full_rank:
        verdict = Verdict.VERIFIED
        msg = f"J(w^k) certified of full row rank {N}, so rank K(w^k) = {N} >= rank K(w^tau)"
    else:
        Jt, At = _jacobian_matrix(ref, X, params, memory_budget)
        cert_tau = certify_full_row_rank(At, memory_budget=memory_budget, progress=progress, **certify_options)
        timings["certify_tau"] = cert_tau.timings.get("total", 0.0)
        if cert_k.certified_rank_deficient and cert_tau.certified_full_rank:
            verdict = Verdict.NOT_VERIFIED
            msg = (f"rank K(w^tau) = {N} (certified) but rank K(w^k) < {N} (certified: "
                   f"{cert_k.reason or cert_k.details.get('kind', '')})")
        else:
            verdict = Verdict.INCONCLUSIVE
            msg = (f"J(w^k): {cert_k.status.value}, J(w^tau): {cert_tau.status.value} — the ranks cannot be "
                   "compared by certificates")
    details = {"bounds": rank_bounds(cert_k), "certificate_tau": None if cert_tau is None else cert_tau.to_dict()}
    if numerical_ranks is None:
        numerical_ranks = verdict is Verdict.INCONCLUSIVE or N <= 2000
    if numerical_ranks:
        from gconv.train.rank import ntk_rank
        t = time.perf_counter()
        rk, rt = ntk_rank(model, X, params=params), ntk_rank(ref, X, params=params)
        timings["numerical_ranks"] = time.perf_counter() - t
        details.update(numerical_rank_k=rk, numerical_rank_tau=rt)
        if verdict is Verdict.INCONCLUSIVE:
            msg += f"; numerically rank K(w^k) = {rk}, rank K(w^tau) = {rt} (matrix_rank, not a proof)"
    timings["total"] = time.perf_counter() - t0
    margin = cert_k.sigma_min_lower if verdict is Verdict.VERIFIED else None
    return VerificationReport(condition="ntk_rank_preserved", paper=PAPER, equation=EQUATION, statement=STATEMENT,
                              inputs=inputs, verdict=verdict, margin=margin,
                              margin_name="sigma_min(J(w^k)) lower bound" if margin is not None else "",
                              certificate=cert_k.to_dict(), certificate_type=type(cert_k).__name__,
                              timings=timings, environment=environment(), message=msg, details=details)
