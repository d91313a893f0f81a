"""Seed 000, Assumption 4 (the safe-exploration condition), checked as in Table 2.

φ(q, θ) ∈ R^{n × (m_H m_{H−1})}, row i = [σ̃(z_iᵀq_{*1}) z_iᵀ, …, σ̃(z_iᵀq_{*m_H}) z_iᵀ] = s_i ⊗ z_i with
z_i = [z̄_i, 1] ∈ R^{m_{H−1}} (the EE head's input plus the constant neuron) and S = σ̃(Z q) ∈ R^{n×m_H}.
The condition is rank φ(q, θ) = n for some (q, θ); as the paper does, q ~ N(0, 1) (seeded) and θ is the
model as given.  m_H = ⌈2n / m_{H−1}⌉ by default (Table 2: MNIST 60,000 / 513 → 234).

φ is never formed: :class:`gconv.linalg.KhatriRao` (S, Z) goes to
:func:`gconv.linalg.certify_full_row_rank` (Gram (SSᵀ)∘(ZZᵀ) after exact whitening, Rump-type
shifted Cholesky; docs/certification.md).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from gconv.linalg import KhatriRao, certify_full_row_rank
from gconv.verify._common import (ceil_div, features_of, progress_default, rank_report, remaining_budget,
                                  seeded_normal, singular_values)

PAPER = "seed 000 (Kawaguchi, Zhang, Deng)"
EQUATION = "Assumption 4; Table 2 (m_H = ceil(2n / m_{H-1}))"
STATEMENT = "rank phi(q, theta) = n, phi = sigmoid(Z q) (Khatri-Rao) Z, Z = [z_bar, 1]"


def _gate(name):
    if name == "sigmoid":
        return torch.sigmoid
    if callable(name):
        return name
    raise ValueError(f"gate must be 'sigmoid' or a callable on float64 tensors, got {name!r}")


def safe_exploration(model_or_features, data=None, *, m_H: int | None = None, q=None, seed: int = 0,
                     layer: str | None = None, gate="sigmoid", append_constant: bool = True,
                     batch_size: int = 256, train: bool = False, device=None, memory_budget=None,
                     checkpoint_dir=None, progress: bool | None = None, spectrum: bool = False,
                     **certify_options):
    """Verify seed 000's Assumption 4 for a model (its feature layer z̄) on ``data``, or for given features.

    Parameters
    ----------
    model_or_features : an ``nn.Module`` (with ``data``; features from ``layer``, default the model's
        ``feature_layer``) or an (n, m) matrix of features z̄.
    m_H : the EE layer's width (default ⌈2n/m_{H−1}⌉); ``q`` : (m_{H−1}, m_H) gate weights (default
        N(0,1) from ``seed``); ``gate`` : σ̃ (sigmoid, as in the experiments).
    append_constant : z = [z̄, 1] (the constant neuron of eq. 3.4); ``m_{H−1}`` counts it.
    batch_size, train, device : feature extraction (:func:`gconv.verify.extract_features`); ``device``
        also selects where the certificate runs.
    memory_budget, checkpoint_dir, progress, **certify_options : to :func:`gconv.linalg.certify_full_row_rank`.
    spectrum : keep the singular values of Z in ``details["spectrum"]`` (for the plot; n ≤ 20,000).

    Returns a :class:`VerificationReport`: VERIFIED iff the certificate is CERTIFIED_FULL_RANK,
    NOT_VERIFIED iff CERTIFIED_RANK_DEFICIENT (e.g. m_H·m_{H−1} < n, duplicated inputs).
    """
    t0 = time.perf_counter()
    timings: dict = {}
    progress = progress_default(progress)
    Zbar, inputs = features_of(model_or_features, data, layer=layer, batch_size=batch_size, train=train,
                               device=device, memory_budget=memory_budget, progress=progress, timings=timings)
    n = Zbar.shape[0]
    Z = torch.cat([Zbar, torch.ones(n, 1, dtype=torch.float64)], 1) if append_constant else Zbar
    m_prev = Z.shape[1]
    if q is not None:
        q = torch.as_tensor(np.asarray(q) if not isinstance(q, torch.Tensor) else q).detach().to("cpu", torch.float64)
        if q.dim() != 2 or q.shape[0] != m_prev:
            raise ValueError(f"q must have shape (m_(H-1), m_H) = ({m_prev}, m_H), got {tuple(q.shape)}")
        if m_H is not None and q.shape[1] != m_H:
            raise ValueError(f"q has {q.shape[1]} columns but m_H = {m_H}")
        m_H = int(q.shape[1])
        q_source = "given"
    else:
        if m_H is None:
            m_H = ceil_div(2 * n, m_prev)
        if not isinstance(m_H, (int, np.integer)) or m_H < 1:
            raise ValueError(f"m_H must be a positive int, got {m_H!r}")
        m_H = int(m_H)
        q = seeded_normal((m_prev, m_H), seed)
        q_source = f"N(0,1), seed {seed}"
    t = time.perf_counter()
    S = _gate(gate)(Z @ q)
    timings["gate"] = time.perf_counter() - t
    inputs.update(seed=seed, m_H=m_H, m_H_minus_1=m_prev, q=q_source, constant_neuron=bool(append_constant),
                  gate=gate if isinstance(gate, str) else getattr(gate, "__name__", "callable"))
    details = {"D_over_n": m_H * m_prev / n}
    if spectrum:
        sv = singular_values(Z)
        if sv is not None:
            details["spectrum"] = dict(sv, name="singular value of Z", title="Z = [z_bar, 1] (the EE head's input)")
    cert = certify_full_row_rank(KhatriRao(S, Z), memory_budget=remaining_budget(memory_budget, Z, S), device=device,
                                 checkpoint_dir=checkpoint_dir, progress=progress, **certify_options)
    return rank_report("safe_exploration", PAPER, EQUATION, STATEMENT, cert, inputs, timings, t0, details=details)
