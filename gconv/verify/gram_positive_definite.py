"""Seed 004 (Chen, Vanden-Eijnden, Bruna), Theorem 3 / Assumption 4: the embedding Gram is positive definite.

G_ab = (1/D) Σ_j φ_j(x_a) φ_j(x_b) = (Φ Φᵀ / D)_ab with Φ ∈ R^{n×D} the random embedding of the
partially trained three-layer network (P-3L, :class:`gconv.models.P3L`).  λ_min(G) > 0 ⇔ rank Φ = n,
so Φ goes to :func:`gconv.linalg.certify_full_row_rank` (which bounds the formation error of ΦΦᵀ
itself) and λ_min(G) ≥ σ_min(Φ)²/D is reported with outward rounding.  n > D proves G singular.
"""
from __future__ import annotations

import time
from fractions import Fraction

import numpy as np
import torch
from torch import nn

from gconv.linalg import certify_full_row_rank
from gconv.linalg._fp import round_down, round_up
from gconv.verify._common import features_of, progress_default, rank_report, remaining_budget
from gconv.verify.report import Verdict

PAPER = "seed 004 (Chen, Vanden-Eijnden, Bruna)"
EQUATION = "Theorem 3, Assumption 4: lambda_min(G) > 0, G = Phi Phi^T / D"
STATEMENT = "the embedding Gram G = Phi Phi^T / D is positive definite"


def _embedding_layer(embedding, layer):
    if layer is not None:
        return layer
    names = dict(embedding.named_modules())
    if "trunk.embed" in names and hasattr(embedding, "embedding"):      # gconv.models.P3L
        return "trunk.embed"
    return ""          # the module's own output


def gram_positive_definite(embedding, data=None, *, layer: str | None = None, batch_size: int = 256,
                           train: bool = False, device=None, memory_budget=None, checkpoint_dir=None,
                           progress: bool | None = None, spectrum: bool = False, **certify_options):
    """Verify λ_min(Φ Φᵀ / D) > 0 for the embedding Φ of ``data``, certified.

    ``embedding``: a :class:`gconv.models.P3L` (its random embedding ``trunk.embed``), any ``nn.Module``
    mapping a batch to (B, D) features (or with ``layer`` naming the module whose output is Φ), or Φ
    itself as an (n, D) matrix (``data`` then unused).  ``spectrum``: keep the eigenvalues of G (n ≤ 4,000)
    for the plot.  The margin is a rigorous lower bound on λ_min(G).
    """
    t0 = time.perf_counter()
    timings: dict = {}
    progress = progress_default(progress)
    if isinstance(embedding, nn.Module):
        layer = _embedding_layer(embedding, layer)
    elif callable(embedding) and not isinstance(embedding, (torch.Tensor, np.ndarray)):
        raise TypeError("pass the embedding as an nn.Module (or Phi as a matrix); wrap a plain function in a "
                        "module whose forward calls it")
    Phi, inputs = features_of(embedding, data, layer=layer, batch_size=batch_size, train=train, device=device,
                              memory_budget=memory_budget, progress=progress, timings=timings)
    n, D = Phi.shape
    inputs.update(D=D)
    details = {}
    if spectrum and n <= 4000:
        t = time.perf_counter()
        ev = torch.linalg.eigvalsh(Phi @ Phi.T / D).flip(0)
        timings["spectrum"] = time.perf_counter() - t
        details["spectrum"] = {"values": ev.tolist(), "name": "eigenvalue of G (float64, uncertified)",
                               "title": "G = Phi Phi^T / D", "overlay": ["lambda_min_G_lower"]}
        details["lambda_min_G_estimate"] = float(ev[-1])
    cert = certify_full_row_rank(Phi, memory_budget=remaining_budget(memory_budget, Phi), device=device,
                                 checkpoint_dir=checkpoint_dir, progress=progress, **certify_options)
    rep = rank_report("gram_positive_definite", PAPER, EQUATION, STATEMENT, cert, inputs, timings, t0,
                      details=details)
    if rep.verdict is Verdict.VERIFIED and cert.sigma_min_lower:
        s = Fraction(round_down(Fraction(cert.sigma_min_lower)))
        lam = round_down(s * s / D)
        rep.margin, rep.margin_name = lam, "lambda_min(G) lower bound"
        rep.details["bounds"]["lambda_min_G_lower"] = lam
        if cert.sigma_max_upper is not None:
            rep.details["bounds"]["lambda_max_G_upper"] = round_up(Fraction(cert.sigma_max_upper) ** 2 / D)
        rep.message = f"lambda_min(G) >= {lam:.4g} (certified) — " + rep.message
    return rep
