"""gconv.jacobian benchmarks on a CUDA GPU with triton.testing.do_bench (skips cleanly without one).

Same sections as bench/bench_jacobian.py — NTK blocks against the torch.func tutorial's two methods,
J·v / Jᵀ·u against whole-batch torch.func.jvp / vjp, the LeNet alignment check — at GPU-sized
shapes, with peak device memory from torch.cuda.max_memory_allocated. Results go to
bench/results/jacobian-<device name>.json, tagged with the device.

    python bench/bench_jacobian_gpu.py [--dtype float32|float64]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench_jacobian import build, digits_28, tf_ntk_contraction, tf_ntk_vp  # noqa: E402
from torch.func import functional_call, jvp, vjp  # noqa: E402

SHAPES = {"mlp": 16, "lenet": 64, "resnet18": 8}
BATCH = {"mlp": 4096, "lenet": 4096, "resnet18": 256}


def bench(fn, reps=None):
    from triton.testing import do_bench
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    ms = do_bench(fn, warmup=25, rep=200 if reps is None else reps)
    return ms, peak


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        why = "torch is a CPU build" if torch.version.cuda is None else "no CUDA device is visible"
        print(f"bench_jacobian_gpu: skipped — {why}")
        return 0
    from gconv._utils import dumps, environment
    from gconv.jacobian import Jacobian, alignment, ntk
    dt = getattr(torch, a.dtype)
    dev = torch.device("cuda")
    report = dict(environment=environment(), device=torch.cuda.get_device_name(), dtype=a.dtype, ntk=[],
                  products=[], alignment=None)
    for name in ("mlp", "lenet", "resnet18"):
        model, shape = build(name)
        model = model.to(dev, dt)
        n = SHAPES[name]
        x1 = torch.randn(n, *shape, device=dev, dtype=dt)
        x2 = torch.randn(n, *shape, device=dev, dtype=dt)
        params = {k: v.detach() for k, v in model.named_parameters()}
        rows = {}
        cands = {"torch.func contraction": lambda: tf_ntk_contraction(model, params, x1, x2),
                 "torch.func ntk-vp": lambda: tf_ntk_vp(model, params, x1, x2)}
        for m in ("structured", "jacobian_contraction", "ntk_vector_products", "auto"):
            cands[f"gconv {m}"] = (lambda m=m: ntk(model, x1, x2, method=m))
        for label, fn in cands.items():
            try:
                ms, peak = bench(fn, reps=100)
                rows[label] = dict(ms=ms, peak_bytes=peak)
            except torch.cuda.OutOfMemoryError as exc:
                rows[label] = dict(error=f"out of memory: {exc}")
                torch.cuda.empty_cache()
            print(name, label, rows[label], flush=True)
        report["ntk"].append(dict(model=name, n1=n, n2=n, methods=rows))
        nb = BATCH[name]
        X = torch.randn(nb, *shape, device=dev, dtype=dt)
        J = Jacobian(model, X)
        v = {k: torch.randn_like(t) for k, t in params.items()}
        u = torch.randn(nb, 10, device=dev, dtype=dt)

        def f(pp):
            return functional_call(model, pp, (X,))
        res = {}
        for label, fn in {"torch.func.jvp": lambda: jvp(f, (params,), (v,)),
                          "gconv mv": lambda: J.mv(J.tm.flatten(v)),
                          "torch.func.vjp": lambda: vjp(f, params)[1](u),
                          "gconv rmv": lambda: J.rmv(u.reshape(-1))}.items():
            ms, peak = bench(fn)
            res[label] = dict(ms=ms, samples_per_s=nb / ms * 1e3, peak_bytes=peak)
            print(name, label, res[label], flush=True)
        report["products"].append(dict(model=name, n=nb, results=res))
    X, y = digits_28(1000)
    model, _ = build("lenet")
    model = model.to(dev, dt)
    out = {}
    for method in ("gram", "lsmr"):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = alignment(model, (X.to(dev, dt), y.to(dev)), "cross_entropy", method=method, progress=False)
        torch.cuda.synchronize()
        out[method] = dict(seconds=time.perf_counter() - t0, verdict=r.verdict,
                           relative_residual=r.relative_residual, iterations=r.iterations)
        print("lenet alignment", method, out[method], flush=True)
    report["alignment"] = out
    os.makedirs(a.out, exist_ok=True)
    tag = torch.cuda.get_device_name().replace(" ", "_").replace("/", "_")
    path = os.path.join(a.out, f"jacobian-{tag}-{a.dtype}.json")
    with open(path, "w") as fh:
        fh.write(dumps(report, indent=1))
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
