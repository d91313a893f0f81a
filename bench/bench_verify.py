"""End-to-end `gconv.verify` benchmark (issue 5): features + certificate, with the time split.

    python -m pytest bench/bench_verify.py -q                  # n = 2,000 and 8,000 (safe exploration),
                                                               # n = 2,000 (expressivity)
    python -m pytest bench/bench_verify.py -q --run-large      # + n = 20,000 and 60,000 (safe exploration)
    GCONV_BENCH_MAX_BYTES=8GiB ...                             # largest explicit φ for the numpy baseline

Data: "digits28" (realistic 28×28 handwritten digits, gconv.data) through the pre-activation
ResNet-18 with softplus(100) of gconv.models (width 64, seed 1, eval mode) — the paper's network.
Each case runs the public verifier (:func:`gconv.verify.safe_exploration` /
:func:`gconv.verify.expressivity`) once (pytest-benchmark, one round: seconds-to-minutes runs) and
records its time split (features / gate / Gram + Cholesky / QR ...), peak memory growth
(gconv.linalg.plan.PeakMemory) and the verdict.  Baseline in the same run: what the papers did after
extracting the same features (timed in the baseline too, so the ratio is end to end) —
numpy.linalg.matrix_rank on the explicit float64 matrix (where it fits in GCONV_BENCH_MAX_BYTES,
default 3 GiB with the SVD's workspace); the certification step alone vs numpy's SVD is
``certify_time_ratio_to_numpy_matrix_rank``.  Results: bench/results/verify_cpu.json (with the machine).
The n = 60,000 run needs ~16 GiB of RAM (see bench/verify_60k.py for the standalone script).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gconv._utils import environment, format_bytes, parse_bytes  # noqa: E402

from bench.core import pick  # noqa: E402

CASES = pick([("safe_exploration", 2000)],
             [("safe_exploration", 2000), ("safe_exploration", 8000), ("expressivity", 2000),
              pytest.param("safe_exploration", 20000, marks=pytest.mark.large),
              pytest.param("safe_exploration", 60000, marks=pytest.mark.large)])
PROVIDERS = ["gconv", "numpy"]
BENCH_BASELINES = {"provider": ("numpy",)}
MAX_BYTES = parse_bytes(os.environ.get("GCONV_BENCH_MAX_BYTES", "3GiB"))
BUDGET = os.environ.get("GCONV_BENCH_MEMORY_BUDGET", "5GiB")
RESULTS: list = []
_FEATURES: dict = {}


def _features(n):
    """Z̄ of the first n digits28 images through ResNet-18 (cached per n), and the seconds it took."""
    if n not in _FEATURES:
        import gconv.data as D
        import gconv.models as M
        from gconv.verify import extract_features
        _FEATURES.clear()
        data = D.load("builtin:digits28", n=n, seed=0)
        model = M.resnet18(1, 10, seed=1)
        t = time.perf_counter()
        Z = extract_features(model, data, batch_size=256, progress=False)
        _FEATURES[n] = (data, model, Z, time.perf_counter() - t)
    return _FEATURES[n]


def _explicit(condition, Z, seed=1):
    import numpy as np
    import torch
    from gconv.verify._common import seeded_normal
    from gconv.verify.features import he_normal
    n = Z.shape[0]
    if condition == "safe_exploration":
        Zc = torch.cat([Z, torch.ones(n, 1, dtype=torch.float64)], 1)
        q = seeded_normal((Zc.shape[1], math.ceil(2 * n / Zc.shape[1])), seed)
        S = torch.sigmoid(Zc @ q)
        return (S[:, :, None] * Zc[:, None, :]).reshape(n, -1).numpy()
    W = he_normal(Z.shape[1], math.ceil(1.1 * n), seed)
    H = torch.nn.functional.softplus(Z @ W, beta=100.0)
    return np.hstack([H.numpy(), np.ones((n, 1))])


def _explicit_bytes(condition, n):
    D = math.ceil(2 * n / 513) * 513 if condition == "safe_exploration" else math.ceil(1.1 * n) + 1
    return 8 * n * D


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("condition,n", CASES)
def test_verify(benchmark, condition, n, provider):
    import numpy as np
    import gconv.verify as V
    from gconv.linalg.plan import PeakMemory
    if provider == "numpy" and _explicit_bytes(condition, n) * 2.5 > MAX_BYTES:
        pytest.skip(f"the explicit matrix at n = {n} is {format_bytes(_explicit_bytes(condition, n))}: over "
                    f"GCONV_BENCH_MAX_BYTES={format_bytes(MAX_BYTES)} with the SVD's workspace")
    data, model, Z, feat_s = _features(n)
    out = {}

    def go():
        with PeakMemory(interval=0.01) as pm:
            t = time.perf_counter()
            if provider == "gconv":      # the whole public call: features again, then the certificate
                fn = getattr(V, condition)
                out["rep"] = fn(model, data, seed=1, memory_budget=BUDGET, progress=False)
            else:                        # the same features (what the papers did next), then numpy
                from gconv.verify import extract_features
                Zb = extract_features(model, data, batch_size=256, progress=False)
                A = _explicit(condition, Zb)
                t1 = time.perf_counter()
                out["rank"] = int(np.linalg.matrix_rank(A))
                out["rank_seconds"] = time.perf_counter() - t1
            out["t"] = time.perf_counter() - t
        out["peak"] = pm.peak
    benchmark.pedantic(go, rounds=1, iterations=1, warmup_rounds=0)
    rec = {"condition": condition, "n": n, "provider": provider, "seconds": out["t"],
           "peak_growth_bytes": out["peak"], "features_seconds_cached_run": feat_s}
    if provider == "gconv":
        rep = out["rep"]
        rec.update(verdict=rep.verdict.value, timings=rep.timings, margin=rep.margin,
                   matrix_shape=rep.inputs["matrix_shape"], certificate_status=rep.certificate["status"],
                   certify_seconds=rep.certificate["timings"].get("total"))
        assert rep.verdict.value in ("VERIFIED", "INCONCLUSIVE", "NOT_VERIFIED")
    else:
        rec.update(numerical_rank=out["rank"], rank_seconds=out["rank_seconds"])
    benchmark.extra_info.update({k: v for k, v in rec.items() if not isinstance(v, dict)})
    RESULTS.append(rec)


def teardown_module(module):
    if not RESULTS:
        return
    base = {(r["condition"], r["n"]): r["rank_seconds"] for r in RESULTS if r["provider"] == "numpy"}
    for r in RESULTS:
        b = base.get((r["condition"], r["n"]))
        if r["provider"] == "gconv" and b and r.get("certify_seconds"):
            r["certify_time_ratio_to_numpy_matrix_rank"] = r["certify_seconds"] / b
    path = os.path.join(ROOT, "bench", "results", "verify_cpu.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    key = lambda r: (r["condition"], r["n"], r["provider"])       # noqa: E731
    old = []
    if os.path.exists(path):
        with open(path) as fh:
            new = {key(r) for r in RESULTS}
            old = [r for r in json.load(fh).get("results", []) if key(r) not in new]
    with open(path, "w") as fh:
        json.dump({"machine": environment(), "results": old + RESULTS}, fh, indent=1, default=str)
