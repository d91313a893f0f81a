"""Rank-certification benchmark (issue 3): gconv vs numpy / torch ``matrix_rank`` on the explicit matrix.

    python -m pytest bench/bench_rank.py -q                      # n = 2,000 and 8,000
    python -m pytest bench/bench_rank.py -q --run-large          # + n = 20,000 and 60,000
    GCONV_BENCH_MAX_BYTES=8GiB ...                              # largest explicit matrix for numpy / torch

Shapes: safe exploration φ = S ⊙ Z (m_{H−1} = 513, m_H = ⌈2n/513⌉, seed 000) and expressivity
[h_X, 1_n] with width ⌈1.1 n⌉ (seeds 002/003), both from real digit images through a random softplus(100)
conv net (:mod:`gconv.linalg.testing`).  gconv certifies from the implicit matrix; numpy / torch get
the materialised float64 matrix (where it fits in ``GCONV_BENCH_MAX_BYTES``, default 3 GiB).  Time is
pytest-benchmark's (one round: these are seconds-to-minutes runs); peak memory is measured in a fresh
subprocess per case (the larger of the sampled RSS growth and the traced NumPy allocations during the
call, after the inputs are built).  Everything lands
in bench/results/rank_cpu.json with the machine and the ratios to numpy measured in the same run.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gconv._utils import environment, format_bytes, parse_bytes  # noqa: E402

SIZES = [2000, 8000, pytest.param(20000, marks=pytest.mark.large), pytest.param(60000, marks=pytest.mark.large)]
SHAPES = ["safe", "expressivity"]
PROVIDERS = ["gconv", "numpy", "torch"]
MAX_BYTES = parse_bytes(os.environ.get("GCONV_BENCH_MAX_BYTES", "3GiB"))
RESULTS: list = []

_INPUTS = textwrap.dedent(r"""
    import math, numpy as np
    import gconv.linalg as L
    from gconv.linalg.testing import digit_features

    def inputs(shape, n):
        Z = digit_features(n)
        if shape == "safe":
            q = np.random.default_rng(1).standard_normal((Z.shape[1], math.ceil(2 * n / Z.shape[1])))
            S = 1.0 / (1.0 + np.exp(-(Z @ q)))
            return L.KhatriRao(S, Z)
        width = math.ceil(1.1 * n)
        W = np.random.default_rng(2).standard_normal((Z.shape[1] - 1, width)) * math.sqrt(2.0 / (Z.shape[1] - 1))
        return L.ActivatedFeatures(Z[:, :-1], W, np.zeros(width), "softplus")

    def run(provider, A, dense):
        if provider == "gconv":
            c = L.certify_full_row_rank(A, progress=False)
            return c.status.value, c.rank, c
        if provider == "numpy":
            r = int(np.linalg.matrix_rank(dense))
        else:
            import torch
            r = int(torch.linalg.matrix_rank(torch.from_numpy(dense)))
        return ("rank", r, None)
""")

_WORKER = _INPUTS + textwrap.dedent(r"""
    import json, sys, time
    from gconv.linalg.plan import PeakMemory
    shape, n, provider = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    A = inputs(shape, n)
    dense = A.to_dense() if provider != "gconv" else None
    pm = PeakMemory(interval=0.005)
    with pm:                       # RSS growth (sampled) and traced NumPy allocations, whichever is larger
        t = time.perf_counter()
        status, rank, _ = run(provider, A, dense)
        dt = time.perf_counter() - t
    print(json.dumps({"seconds": dt, "peak_growth_bytes": pm.peak, "status": status, "rank": rank}))
""")

_ns: dict = {}
exec(_INPUTS, _ns)
_CACHE: dict = {}


def _explicit_bytes(shape, n):
    D = math.ceil(2 * n / 513) * 513 if shape == "safe" else math.ceil(1.1 * n) + 1
    return 8 * n * D


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", SIZES)
def test_rank(benchmark, n, shape, provider):
    if provider != "gconv" and _explicit_bytes(shape, n) * 2.5 > MAX_BYTES:
        pytest.skip(f"the explicit {shape} matrix at n = {n} is {format_bytes(_explicit_bytes(shape, n))}: "
                    f"over GCONV_BENCH_MAX_BYTES={format_bytes(MAX_BYTES)} with the SVD's workspace")
    key = (shape, n)
    if key not in _CACHE:
        _CACHE.clear()
        A = _ns["inputs"](shape, n)
        _CACHE[key] = (A, None)
    A, dense = _CACHE[key]
    if provider != "gconv" and dense is None:
        dense = A.to_dense()
        _CACHE[key] = (A, dense)
    out = {}

    def go():
        import time
        t = time.perf_counter()
        out["r"] = _ns["run"](provider, A, dense)
        out["t"] = time.perf_counter() - t
    benchmark.pedantic(go, rounds=1, iterations=1, warmup_rounds=0)
    status, rank, cert = out["r"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    w = subprocess.run([sys.executable, "-c", _WORKER, shape, str(n), provider], capture_output=True, text=True,
                       env=env, timeout=7200)
    mem = json.loads(w.stdout.strip().splitlines()[-1]) if w.returncode == 0 else {"error": w.stderr[-500:]}
    rec = {"n": n, "shape": shape, "provider": provider, "seconds": out["t"],
           "peak_growth_bytes": mem.get("peak_growth_bytes"), "status": status, "rank": rank}
    if cert is not None:
        rec["sigma_min_lower"] = cert.sigma_min_lower
        rec["methods"] = [(m.method, m.outcome) for m in cert.methods]
    benchmark.extra_info.update(rec)
    RESULTS.append(rec)
    if provider == "gconv":
        assert status in ("CERTIFIED_FULL_RANK", "INCONCLUSIVE", "CERTIFIED_RANK_DEFICIENT")


def teardown_module(module):
    if not RESULTS:
        return
    base = {(r["n"], r["shape"]): r["seconds"] for r in RESULTS if r["provider"] == "numpy"}
    for r in RESULTS:
        b = base.get((r["n"], r["shape"]))
        r["speedup_vs_numpy"] = (b / r["seconds"]) if b and r["seconds"] else None
    path = os.path.join(ROOT, "bench", "results", "rank_cpu.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    old = []
    if os.path.exists(path):
        with open(path) as fh:
            old = [r for r in json.load(fh).get("results", [])
                   if (r["n"], r["shape"], r["provider"]) not in {(x["n"], x["shape"], x["provider"]) for x in RESULTS}]
    with open(path, "w") as fh:
        json.dump({"machine": environment(), "results": old + RESULTS}, fh, indent=1)
