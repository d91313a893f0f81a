"""Seeds 002/003, Assumption 1 (expressivity): rank [h_X^{(H)}(w), 1_n] = n for some w.

As in the experiments (seed 003 §7 / Table 1): the model's last hidden representation z̄ (e.g. the
pre-activation ResNet-18's pooled features) feeds a fully connected softplus(ζ = 100) layer of width
⌈1.1 n⌉, He-initialised from ``seed``; h_X is that layer's output.  The matrix
[softplus(Z̄ W + b), 1_n] is :class:`gconv.linalg.ActivatedFeatures` (evaluated in float64, in blocks,
never stored) and goes to :func:`gconv.linalg.certify_full_row_rank` (Gram route, then the QR route
that does not square the condition number, when memory allows).

``width="model"`` takes the model's own feature layer as h_X (e.g. ``resnet18(hidden_width=⌈1.1n⌉)``
or a trained network) and certifies [h_X, 1_n] directly.
"""
from __future__ import annotations

import math
import time

import torch

from gconv.linalg import ActivatedFeatures, certify_full_row_rank
from gconv.verify._common import features_of, progress_default, rank_report, remaining_budget, singular_values
from gconv.verify.features import he_normal

PAPER = "seeds 002/003 (Kawaguchi, Sun)"
EQUATION = "Assumption 1; Table 1 (last hidden layer of width ceil(1.1 n))"
STATEMENT = "rank [h_X, 1_n] = n"


def expressivity(model, data=None, *, width=None, seed: int = 0, layer: str | None = None,
                 activation="softplus", zeta: float = 100.0, batch_size: int = 256, train: bool = False,
                 device=None, memory_budget=None, checkpoint_dir=None, progress: bool | None = None,
                 spectrum: bool = False, **certify_options):
    """Verify Assumption 1 of seeds 002/003 for ``model`` on ``data`` (or for a given (n, m) feature matrix).

    ``width``: None → ⌈1.1 n⌉ (the paper's added last hidden layer on top of ``layer``'s output), an int
    → that width, ``"model"`` → the features themselves are h_X.  ``seed`` draws W ~ N(0, 2/m) (He);
    b = 0.  ``activation``/``zeta``: that layer's σ (softplus, ζ = 100).  Other arguments as
    :func:`gconv.verify.safe_exploration`.  VERIFIED iff CERTIFIED_FULL_RANK; NOT_VERIFIED iff
    CERTIFIED_RANK_DEFICIENT (width + 1 < n, duplicated inputs, ...).
    """
    t0 = time.perf_counter()
    timings: dict = {}
    progress = progress_default(progress)
    Zbar, inputs = features_of(model, data, layer=layer, batch_size=batch_size, train=train, device=device,
                               memory_budget=memory_budget, progress=progress, timings=timings)
    n, m = Zbar.shape
    details = {}
    if width == "model":
        H = torch.cat([Zbar, torch.ones(n, 1, dtype=torch.float64)], 1)
        A, used = H, (H,)
        inputs.update(width=m, hidden_layer="the model's feature layer", seed=seed)
        if spectrum:
            sv = singular_values(H)
            if sv is not None:
                details["spectrum"] = dict(sv, name="singular value", title="[h_X, 1_n]", overlay=["sigma_min_lower"])
    else:
        width = math.ceil(1.1 * n) if width is None else width
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"width must be a positive int, 'model' or None, got {width!r}")
        W = he_normal(m, width, seed)
        b = torch.zeros(width, dtype=torch.float64)
        A, used = ActivatedFeatures(Zbar, W, b, activation, zeta=zeta), (W,)
        inputs.update(width=width, hidden_layer=f"fully connected {activation}"
                      + (f"(zeta={zeta:g})" if activation == "softplus" else "") + ", He init, b = 0", seed=seed)
        if spectrum and n * (width + 1) <= 25_000_000:
            H = torch.from_numpy(A.to_dense())
            details["spectrum"] = dict(singular_values(H), name="singular value", title="[h_X, 1_n]",
                                       overlay=["sigma_min_lower"])
            del H
    cert = certify_full_row_rank(A, memory_budget=remaining_budget(memory_budget, Zbar, *used), device=device,
                                 checkpoint_dir=checkpoint_dir, progress=progress, **certify_options)
    return rank_report("expressivity", PAPER, EQUATION, STATEMENT, cert, inputs, timings, t0, details=details)
