"""Rank certification (issue 3): gconv's certificate from the implicit matrix vs numpy / torch ``matrix_rank``.

Shapes: safe exploration φ = S ⊙ Z (m_{H−1} = 513, m_H = ⌈2n/513⌉, seed 000) and expressivity
[h_X, 1_n] with width ⌈1.1 n⌉ (seeds 002/003), both from real digit images through a random softplus(100)
conv net (:mod:`gconv.linalg.testing`).  ``gconv`` certifies full row rank from the implicit matrix
(``device`` = the run's device: the dense device route on CUDA); ``numpy`` / ``torch`` compute
``matrix_rank`` (an SVD) of the materialised float64 matrix, where it fits in ``GCONV_BENCH_MAX_BYTES``
(default 3 GiB, with the SVD's workspace) — otherwise they are skipped with that reason.  ``torch`` runs
on the run's device.  One round per case (seconds to minutes); the rank and the certificate's status
are in extra_info.

Counted work (extra_info ``flops``, float64): the dense Gram route on the explicit n×D matrix,
n²·D (the Gram, symmetric) + n³/3 (Cholesky), for every provider alike — an *equivalent-work* rate:
gconv forms the Gram implicitly (cheaper for S ⊙ Z), an SVD does more.  Bound: float64 GEMM rate.

Sizes: quick n ∈ {500, 1000, 2000} (expressivity up to 1000), default adds 4,000 and 8,000, full adds
20,000 and 60,000 (``large``; the n = 60,000 safe-exploration run is ~25 min and ~16 GiB on 2 cores —
see bench/rank_60k.py for the checkpointed end-to-end script).
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from gconv._utils import format_bytes, parse_bytes  # noqa: E402

from bench.core import pick, setting  # noqa: E402

DEVICE = setting("device")
_L = [pytest.param(n, marks=pytest.mark.large) for n in (20000, 60000)]
SIZES = {"safe": pick([500, 1000, 2000], [500, 1000, 2000, 4000, 8000], [500, 1000, 2000, 4000, 8000] + _L),
         "expressivity": pick([500, 1000], [500, 1000, 2000, 4000, 8000], [500, 1000, 2000, 4000, 8000] + _L)}
PROVIDERS = ["gconv", "numpy", "torch"]
MAX_BYTES = parse_bytes(os.environ.get("GCONV_BENCH_MAX_BYTES", "3GiB"))
BENCH_BASELINES = {"provider": ("numpy", "torch")}
BENCH_PLOTS = [{"name": f"rank-{s}-vs-n", "x": "n", "series": "provider", "where": {"shape": s},
                "title": f"rank certification vs n ({s})"} for s in SIZES]


def inputs(shape, n):
    """The implicit matrix for ``shape`` at ``n`` rows (deterministic: digit features)."""
    import gconv.linalg as L
    from gconv.linalg.testing import digit_features
    Z = digit_features(n)
    if shape == "safe":
        q = np.random.default_rng(1).standard_normal((Z.shape[1], math.ceil(2 * n / Z.shape[1])))
        S = 1.0 / (1.0 + np.exp(-(Z @ q)))
        return L.KhatriRao(S, Z)
    width = math.ceil(1.1 * n)
    W = np.random.default_rng(2).standard_normal((Z.shape[1] - 1, width)) * math.sqrt(2.0 / (Z.shape[1] - 1))
    return L.ActivatedFeatures(Z[:, :-1], W, np.zeros(width), "softplus")


def explicit_columns(shape, n):
    return math.ceil(2 * n / 513) * 513 if shape == "safe" else math.ceil(1.1 * n) + 1


_CACHE: dict = {}


def _get(shape, n, dense):
    key = (shape, n)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = [inputs(shape, n), None]
    if dense and _CACHE[key][1] is None:
        _CACHE[key][1] = _CACHE[key][0].to_dense()
    return _CACHE[key]


def _cases():
    return [(s, n) for s in SIZES for n in SIZES[s]]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape,n", [pytest.param(s, n.values[0], marks=n.marks) if hasattr(n, "values")
                                     else (s, n) for s, n in _cases()])
def test_rank(benchmark, shape, n, provider):
    """Certify / compute the rank of the n×D matrix; flops = n²·D + n³/3 (module docstring)."""
    D = explicit_columns(shape, n)
    if provider != "gconv" and 8 * n * D * 2.5 > MAX_BYTES:
        pytest.skip(f"the explicit {shape} matrix at n = {n} is {format_bytes(8 * n * D)}: over "
                    f"GCONV_BENCH_MAX_BYTES={format_bytes(MAX_BYTES)} with the SVD's workspace")
    A, dense = _get(shape, n, provider != "gconv")
    benchmark.group = f"rank {shape} n={n}"
    benchmark.extra_info.update(n=n, D=D, flops=n * n * D + n ** 3 / 3, flops_dtype="float64")
    out = {}

    if provider == "gconv":
        import gconv.linalg as L

        def go():
            out["c"] = L.certify_full_row_rank(A, progress=False, device=DEVICE)
    elif provider == "numpy":
        def go():
            out["rank"] = int(np.linalg.matrix_rank(dense))
    else:
        import torch
        t = torch.from_numpy(dense).to(DEVICE)

        def go():
            out["rank"] = int(torch.linalg.matrix_rank(t))
    benchmark.pedantic(go, rounds=1, iterations=1, warmup_rounds=0)
    if provider == "gconv":
        c = out["c"]
        benchmark.extra_info.update(status=c.status.value, rank=c.rank, sigma_min_lower=c.sigma_min_lower,
                                    methods=[(m.method, m.outcome) for m in c.methods])
        assert c.status.value in ("CERTIFIED_FULL_RANK", "INCONCLUSIVE", "CERTIFIED_RANK_DEFICIENT")
    else:
        benchmark.extra_info.update(status="rank", rank=out["rank"])


if __name__ == "__main__":        # python bench/bench_rank.py [--quick|--full] [--device cuda] ...: this suite alone
    from bench.__main__ import main
    sys.exit(main(["run", "--suite", "rank", *sys.argv[1:]]))
