"""Fused layers (issue 2): the EE head (seed 000, eq. 3.4) and softplus_ζ against torch eager and torch.compile.

Providers: ``eager`` (the plain-PyTorch reference differentiated by autograd), ``compile``
(``torch.compile`` of that reference) and ``gconv`` (the custom op on the implementation
gconv.backends() picks for the device: C++ kernels on CPU when built, CUDA/Triton on GPU).
Modes: ``fwd`` (no grad), ``bwd`` (backward only, forward done in setup), ``full`` (forward +
backward). Gate states: ``self`` (exploration: z, W, V all need gradients) and ``frozen``
(exploitation: R frozen, only W needs a gradient).  Inputs are drawn fresh per run (the run's seed).
``saved_bytes`` in extra_info: bytes autograd keeps for backward beyond the inputs (exact, via
saved_tensors_hooks).

Counted work (extra_info ``flops`` / ``bytes``; the report divides by the run's roofline):

* EE head, with G = 2·B·(m+1)·m_y·m_H (one z̃·Wᵀ GEMM): self gate fwd G, bwd 2G (dW, dz), full 3G;
  frozen gate fwd 2G (W and R), bwd G (dW), full 3G.  Bound: GEMM rate at the dtype (float32).
* softplus on n float32 elements: bytes moved fwd 2·4n (read z, write y), bwd 3·4n (read z, dy;
  write dz), full 5·4n.  Bound: copy bandwidth.

Shapes. EE head: MNIST (B ∈ {64, 4096}, m = 512, m_H = 234, m_y = 10) and a large shape (GPU: B = 8192,
m = m_H = 4096, m_y = 1; CPU: scaled down to B = 1024, m = m_H = 1024, since the GPU shape needs
~275 GFLOP per GEMM); a batch sweep of the MNIST head (full step, self gate) for the time-vs-batch plot.
Softplus: 1M (quick) / 16M (CPU) / 64M (GPU) elements.  ``python bench/gpu_layers.py`` adds the
per-implementation GPU variants (Triton tf32x3, recompute backward) and the issue-2 targets.
"""
from __future__ import annotations

import os
import sys

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
from bench.core import pick, setting  # noqa: E402

DEVICE = setting("device")
EE_SHAPES = {"mnist-b64": (64, 512, 234, 10), "mnist-b4096": (4096, 512, 234, 10),
             "large": (8192, 4096, 4096, 1) if DEVICE == "cuda" else (1024, 1024, 1024, 1)}
SOFTPLUS_N = pick(2**20, 64 * 2**20 if DEVICE == "cuda" else 16 * 2**20)
PROVIDERS = ("eager", "compile", "gconv")
MODES = pick(("fwd", "full"), ("fwd", "bwd", "full"))
BATCHES = pick([16, 64, 256, 1024], [16, 64, 256, 1024, 4096] + ([16384, 65536] if DEVICE == "cuda" else []))
BENCH_BASELINES = {"provider": ("eager", "compile")}
BENCH_PLOTS = [{"name": "ee-head-vs-batch", "function": "test_ee_head_batch", "x": "batch", "series": "provider",
                "title": "EE head full step (MNIST head, self gate) vs batch"}]


# ------------------------------------------------------------------ cases
def _ee_tensors(shape, gate, dtype=torch.float32, seed=0):
    bsz, m, m_h, m_y = shape
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    z = torch.randn(bsz, m, generator=g, dtype=dtype, device=DEVICE)
    w = torch.randn(m_y, m_h, m + 1, generator=g, dtype=dtype, device=DEVICE) * (2.0 / (m + 1)) ** 0.5
    v = (torch.rand(m_y, m_h, generator=g, dtype=dtype, device=DEVICE) * 2 - 1) / m_h ** 0.5
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


def ee_case(shape, gate, provider, mode, seed=0):
    """(setup, run) pair: setup() → args for run(*args).  ``shape``: a name in EE_SHAPES or (B, m, m_H, m_y)."""
    z, w, v, r = _ee_tensors(EE_SHAPES.get(shape, shape) if isinstance(shape, str) else shape, gate, seed=seed)
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


def sp_case(provider, mode, n=SOFTPLUS_N, seed=0):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    z = (torch.randn(n, generator=gen, device=DEVICE) * 0.05).requires_grad_()
    g = torch.randn(n, generator=gen, device=DEVICE)
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


# ------------------------------------------------------------------ benchmarks
def ee_flops(dims, gate, mode):
    """Counted GEMM flops (module docstring): G = 2·B·(m+1)·m_y·m_H per z̃·Wᵀ product."""
    bsz, m, m_h, m_y = dims
    g = 2 * bsz * (m + 1) * m_y * m_h
    return g * {("self", "fwd"): 1, ("self", "bwd"): 2, ("self", "full"): 3,
                ("frozen", "fwd"): 2, ("frozen", "bwd"): 1, ("frozen", "full"): 3}[(gate, mode)]


def _bench_ee(benchmark, dims, gate, provider, mode, seed):
    (setup, run), tensors = ee_case(dims, gate, provider, mode, seed)
    z, w, v, r, fn, _ = tensors
    benchmark.extra_info.update(flops=ee_flops(dims, gate, mode), flops_dtype="float32")
    if mode != "fwd":
        benchmark.extra_info["saved_bytes"] = saved_bytes(lambda: fn(z, w, v, r), (z, w, v, r))
    rounds = 3 if DEVICE == "cpu" and dims[0] * dims[1] >= 1024 * 1024 else 10
    if setup is None:
        run()   # warm-up (compiles)
        benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    else:
        run(*setup()[0])
        benchmark.pedantic(run, setup=setup, rounds=rounds, warmup_rounds=1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("gate", ["self", "frozen"])
@pytest.mark.parametrize("shape_name", pick(["mnist-b4096"], list(EE_SHAPES)))
def test_ee_head(benchmark, shape_name, gate, provider, mode, bench_seed):
    """EE head at the named shape; flops counted by :func:`ee_flops`."""
    benchmark.group = f"ee_head {shape_name} {gate} {mode}"
    _bench_ee(benchmark, EE_SHAPES[shape_name], gate, provider, mode, bench_seed)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("batch", BATCHES)
def test_ee_head_batch(benchmark, batch, provider, bench_seed):
    """MNIST head (m = 512, m_H = 234, m_y = 10), self gate, full step, vs batch (flops 3G)."""
    benchmark.group = f"ee_head batch {batch} self full"
    _bench_ee(benchmark, (batch, 512, 234, 10), "self", provider, "full", bench_seed)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_softplus(benchmark, provider, mode, bench_seed):
    """softplus_ζ (ζ = 100) on SOFTPLUS_N float32 elements; bytes = (2|3|5)·4n for fwd|bwd|full."""
    benchmark.group = f"softplus {SOFTPLUS_N} fp32 {mode}"
    (setup, run), (z, g, fn) = sp_case(provider, mode, SOFTPLUS_N, bench_seed)
    benchmark.extra_info["bytes"] = {"fwd": 2, "bwd": 3, "full": 5}[mode] * 4 * SOFTPLUS_N
    if mode != "fwd":
        benchmark.extra_info["saved_bytes"] = saved_bytes(lambda: fn(z, 100.0), (z,))
    if setup is None:
        run()
        benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=1)
    else:
        run(*setup()[0])
        benchmark.pedantic(run, setup=setup, rounds=10, warmup_rounds=1)


if __name__ == "__main__":        # python bench/bench_layers.py [--quick|--full] [--device cuda] ...: this suite alone
    from bench.__main__ import main
    sys.exit(main(["run", "--suite", "layers", *sys.argv[1:]]))
