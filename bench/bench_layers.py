"""CPU benchmarks of the fused layers: EE head (seed 000, eq. 3.4) and softplus_ζ.

Two ways to run it (both measure every provider in the same process, so ratios are comparable):

    python -m pytest bench/bench_layers.py --benchmark-only          # pytest-benchmark tables
    python bench/bench_layers.py [--quick] [--out bench/results/cpu-<model>/layers.json]
                                                                      # one JSON with ratios

Providers: ``eager`` (the plain-PyTorch reference differentiated by autograd), ``compile``
(``torch.compile`` of that reference) and ``gconv`` (the custom op on the implementation
gconv.backends() picks for CPU — the C++ kernels when built).
Modes: ``fwd`` (no grad), ``bwd`` (backward only, forward done in setup), ``full`` (forward +
backward). Gate states: ``self`` (exploration: z, W, V all need gradients) and ``frozen``
(exploitation: R frozen, only W needs a gradient).
Memory: bytes autograd keeps for backward beyond the inputs (``saved_bytes``, exact, via
saved_tensors_hooks).
Timing: the providers of one case run interleaved (rep i runs all of them, in rotation), so load
from other processes on a shared machine hits them alike; the JSON has median and min.

Shapes. EE head: MNIST (B ∈ {64, 4096}, m = 512, m_H = 234, m_y = 10) and a *scaled-down* large
shape (B = 1024, m = 1024, m_H = 1024, m_y = 1; the GPU shape B = 8192, m = m_H = 4096 needs
~275 GFLOP per GEMM, minutes per step on 2 cores). Softplus: 16M float32 elements on CPU (the
GPU script uses 64M).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import pytest
import torch

# every (shape, gate, grad-mode) case is a new specialisation of the compiled reference
torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
if hasattr(torch._dynamo.config, "recompile_limit"):
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from gconv import ops  # noqa: E402
from gconv._utils import environment, peak_rss_bytes, to_jsonable  # noqa: E402

EE_SHAPES = {"mnist-b64": (64, 512, 234, 10), "mnist-b4096": (4096, 512, 234, 10),
             "large-scaled": (1024, 1024, 1024, 1)}
SOFTPLUS_N = 16 * 2**20
PROVIDERS = ("eager", "compile", "gconv")
MODES = ("fwd", "bwd", "full")


# ------------------------------------------------------------------ cases
def _ee_tensors(shape, gate, dtype=torch.float32):
    bsz, m, m_h, m_y = shape
    g = torch.Generator().manual_seed(0)
    z = torch.randn(bsz, m, generator=g, dtype=dtype)
    w = torch.randn(m_y, m_h, m + 1, generator=g, dtype=dtype) * (2.0 / (m + 1)) ** 0.5
    v = torch.rand(m_y, m_h, generator=g, dtype=dtype) * 2 / m_h ** 0.5 - 1 / m_h ** 0.5
    r = w.clone() if gate == "frozen" else None
    z.requires_grad_(gate == "self")
    w.requires_grad_(True)
    v.requires_grad_(gate == "self")
    return z, w, v, r


_COMPILED = {}


def _ee_fn(provider):
    if provider == "gconv":
        return ops.ee_head
    if provider == "eager":
        return ops.ee_head_reference
    if "ee" not in _COMPILED:
        _COMPILED["ee"] = torch.compile(ops.ee_head_reference, fullgraph=True)
    return _COMPILED["ee"]


def _sp_fn(provider):
    if provider == "gconv":
        return ops.softplus
    if provider == "eager":
        return ops.softplus_reference
    if "sp" not in _COMPILED:
        _COMPILED["sp"] = torch.compile(ops.softplus_reference, fullgraph=True)
    return _COMPILED["sp"]


def ee_case(shape_name, gate, provider, mode):
    """(setup, run) pair: setup() → args for run(*args)."""
    z, w, v, r = _ee_tensors(EE_SHAPES[shape_name], gate)
    fn = _ee_fn(provider)
    leaves = [t for t in (z, w, v) if t.requires_grad]

    def fwd():
        with torch.no_grad():
            return fn(z, w, v, r)

    def full():
        out = fn(z, w, v, r)
        return torch.autograd.grad(out, leaves, torch.ones_like(out))

    def setup_bwd():
        out = fn(z, w, v, r)
        return (out,), {}

    def bwd(out):
        return torch.autograd.grad(out, leaves, torch.ones_like(out))

    return {"fwd": (None, fwd), "full": (None, full), "bwd": (setup_bwd, bwd)}[mode], (z, w, v, r, fn, leaves)


def sp_case(provider, mode, n=SOFTPLUS_N):
    z = (torch.randn(n, generator=torch.Generator().manual_seed(0)) * 0.05).requires_grad_()
    g = torch.randn(n)
    fn = _sp_fn(provider)

    def fwd():
        with torch.no_grad():
            return fn(z, 100.0)

    def full():
        return torch.autograd.grad(fn(z, 100.0), z, g)

    def setup_bwd():
        return (fn(z, 100.0),), {}

    def bwd(y):
        return torch.autograd.grad(y, z, g)

    return {"fwd": (None, fwd), "full": (None, full), "bwd": (setup_bwd, bwd)}[mode], (z, g, fn)


def saved_bytes(fn_call, inputs=()) -> int:
    """Bytes autograd keeps alive for backward during fn_call(), beyond the inputs themselves
    (z, W, V, R exist anyway), deduplicated by storage."""
    skip = {t.untyped_storage().data_ptr() for t in inputs if t is not None}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn_call()
    return sum(seen.values())


# ------------------------------------------------------------------ pytest-benchmark
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("gate", ["self", "frozen"])
@pytest.mark.parametrize("shape_name", list(EE_SHAPES))
def test_ee_head(benchmark, shape_name, gate, provider, mode):
    benchmark.group = f"ee_head {shape_name} {gate} {mode}"
    (setup, run), tensors = ee_case(shape_name, gate, provider, mode)
    z, w, v, r, fn, _ = tensors
    if mode != "fwd":
        benchmark.extra_info["saved_bytes"] = saved_bytes(lambda: fn(z, w, v, r), (z, w, v, r))
    rounds = 3 if EE_SHAPES[shape_name][0] >= 1024 else 20
    if setup is None:
        run()   # warm-up (compiles)
        benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    else:
        run(*setup()[0])
        benchmark.pedantic(run, setup=setup, rounds=rounds, warmup_rounds=1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_softplus(benchmark, provider, mode):
    benchmark.group = f"softplus {SOFTPLUS_N} fp32 {mode}"
    (setup, run), (z, g, fn) = sp_case(provider, mode)
    if mode != "fwd":
        benchmark.extra_info["saved_bytes"] = saved_bytes(lambda: fn(z, 100.0), (z,))
    if setup is None:
        run()
        benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    else:
        run(*setup()[0])
        benchmark.pedantic(run, setup=setup, rounds=5, warmup_rounds=1)


# ------------------------------------------------------------------ script: one JSON with ratios
def _time_group(cases: dict, reps: int) -> dict:
    """Interleaved timing: each rep runs every provider once, in rotation, so that load from other
    processes on a shared machine hits all providers alike. Returns {provider: (median_s, min_s)}."""
    ts = {p: [] for p in cases}
    order = list(cases)
    for i in range(reps):
        for p in order[i % len(order):] + order[:i % len(order)]:
            setup, run = cases[p]
            args = setup()[0] if setup else ()
            t0 = time.perf_counter()
            run(*args)
            ts[p].append(time.perf_counter() - t0)
    return {p: (sorted(v)[len(v) // 2], min(v)) for p, v in ts.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/cpu-<model>/layers.json)")
    ap.add_argument("--quick", action="store_true", help="only the MNIST B=64 head and 1M-element softplus")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (on a shared, loaded machine 1 thread avoids timing "
                         "OpenMP barrier waits instead of the kernels)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment()
    rows = []
    shapes = ["mnist-b64"] if args.quick else list(EE_SHAPES)
    for shape_name in shapes:
        for gate in ("self", "frozen"):
            for mode in MODES:
                cases, meta = {}, {}
                for provider in PROVIDERS:
                    (setup, run), (z, w, v, r, fn, _) = ee_case(shape_name, gate, provider, mode)
                    run(*(setup()[0] if setup else ()))          # warm-up (and compilation)
                    cases[provider] = (setup, run)
                    meta[provider] = {}
                    if mode != "fwd":
                        meta[provider]["saved_bytes"] = saved_bytes(lambda: fn(z, w, v, r), (z, w, v, r))
                reps = args.reps if EE_SHAPES[shape_name][0] >= 1024 else 4 * args.reps
                for provider, (med, mn) in _time_group(cases, reps).items():
                    meta[provider].update(median_s=med, min_s=mn)
                _ratios(meta)
                rows.append({"op": "ee_head", "shape": shape_name, "dims(B,m,m_H,m_y)": EE_SHAPES[shape_name],
                             "gate": gate, "mode": mode, "dtype": "float32", "reps": reps, **meta})
                print(_line(rows[-1]), flush=True)
    n = 2**20 if args.quick else SOFTPLUS_N
    for mode in MODES:
        cases, meta = {}, {}
        for provider in PROVIDERS:
            (setup, run), (z, g, fn) = sp_case(provider, mode, n)
            run(*(setup()[0] if setup else ()))
            cases[provider] = (setup, run)
            meta[provider] = {}
            if mode != "fwd":
                meta[provider]["saved_bytes"] = saved_bytes(lambda: fn(z, 100.0), (z,))
        for provider, (med, mn) in _time_group(cases, 2 * args.reps).items():
            moved = (2 if mode == "fwd" else 3 if mode == "bwd" else 5) * n * 4
            meta[provider].update(median_s=med, min_s=mn, GBps=moved / med / 1e9)
        _ratios(meta)
        rows.append({"op": "softplus", "shape": f"{n} elements", "gate": None, "mode": mode, "dtype": "float32",
                     "reps": 2 * args.reps, **meta})
        print(_line(rows[-1]), flush=True)
    rss = peak_rss_bytes()
    import gconv
    out = {"device": env["cpu"], "environment": env, "backends": gconv.backends(), "peak_rss_bytes": rss,
           "load_average_at_end": os.getloadavg(), "results": rows,
           "note": "median over interleaved reps; ratios are eager/compile median over gconv median"}
    path = args.out or os.path.join(ROOT, "bench", "results", "cpu-" + _slug(env["cpu"]), "layers.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(to_jsonable(out), fh, indent=1)
    print("wrote", path)


def _ratios(res):
    for p in PROVIDERS:
        res[p]["speedup_vs_eager"] = res["eager"]["median_s"] / res[p]["median_s"]
        res[p]["speedup_vs_compile"] = res["compile"]["median_s"] / res[p]["median_s"]


def _line(row):
    g = row["gconv"]
    return (f"{row['op']:9s} {row['shape']:14s} {str(row['gate']):7s} {row['mode']:5s} "
            f"eager {row['eager']['median_s'] * 1e3:9.2f} ms  compile {row['compile']['median_s'] * 1e3:9.2f} ms  "
            f"gconv {g['median_s'] * 1e3:9.2f} ms  ×eager {g['speedup_vs_eager']:.2f}  "
            f"×compile {g['speedup_vs_compile']:.2f}")


def _slug(s):
    return "".join(c if c.isalnum() else "-" for c in s).strip("-").lower()[:60]


if __name__ == "__main__":
    main()
