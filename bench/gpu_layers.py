"""GPU benchmarks of the fused layers (triton.testing.do_bench medians); writes one JSON per device.

    python bench/gpu_layers.py                 # full run, bench/results/<gpu-name>/layers.json
    python bench/gpu_layers.py --quick         # MNIST B=64/4096 head and 16M-element softplus only

Needs a CUDA device (exits with status 2 and the reason otherwise). Every provider is measured in
the same process, so the ratios in the JSON compare like with like:

* EE head (seed 000, eq. 3.4), float32, shapes MNIST (B ∈ {64, 4096}, m = 512, m_H = 234,
  m_y = 10) and large (B = 8192, m = 4096, m_H = 4096, m_y = 1); gate ``self`` (exploration: z, W,
  V need gradients) and ``frozen`` (exploitation: R frozen, only W). Providers: ``eager``
  (reference + autograd), ``compile`` (torch.compile of it), and gconv on each implementation:
  ``gconv-cuda`` (cuBLAS + fused epilogues), ``gconv-triton`` (fused GEMM kernels, fp32 'ieee'
  dots) and ``gconv-triton-tf32x3`` (GCONV_FP32_DOT=tf32x3), each with the default backward
  (saved tensors) and ``-recompute`` (GCONV_EE_HEAD_BACKWARD=recompute).
  Modes ``fwd`` (no grad), ``bwd`` (backward only), ``full`` (forward + backward); peak memory
  above the inputs (torch.cuda.max_memory_allocated); max relative error against float64.
* softplus, 64M elements, float32 and bfloat16: providers eager reference, compile, torch's own
  F.softplus, gconv-cuda, gconv-triton; GB/s and the fraction of the device copy bandwidth
  measured here (fwd+bwd moves 5 tensors: read z, write y, read dy, read z, write dz).

Targets (issue 2, H100): EE-head full step at B = 4096 ≥ 1.5× eager and ≥ 1.1× compile;
softplus fwd+bwd ≥ 85 % of copy bandwidth. The JSON records each target and whether it was met.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

# every (shape, gate, grad-mode) case is a new specialisation of the compiled reference
torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
if hasattr(torch._dynamo.config, "recompile_limit"):
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)

EE_SHAPES = {"mnist-b64": (64, 512, 234, 10), "mnist-b4096": (4096, 512, 234, 10),
             "large": (8192, 4096, 4096, 1)}
DEV = "cuda"   # --selftest runs the whole script on CPU with tiny shapes (checks the script itself)


def _sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def _mem():
    return torch.cuda.memory_allocated() if DEV == "cuda" else 0


def _reset_peak():
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak():
    return torch.cuda.max_memory_allocated() if DEV == "cuda" else 0


@contextlib.contextmanager
def env(**kw):
    old = {k: os.environ.get(k) for k in kw}
    os.environ.update({k: v for k, v in kw.items() if v is not None})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def gconv_providers():
    from gconv import _backends as B
    out = {}
    for impl in (("cuda", "triton") if DEV == "cuda" else ("cpp",)):
        ok, why = B._CHECKS["ee_head"][impl](DEV)
        if not ok:
            print(f"[skip] gconv-{impl}: {why}", file=sys.stderr)
            continue
        variants = [("", {})] + ([("-tf32x3", {"GCONV_FP32_DOT": "tf32x3"})] if impl == "triton" else [])
        for suffix, extra in variants:
            for strat in ("save", "recompute"):
                name = f"gconv-{impl}{suffix}" + ("" if strat == "save" else "-recompute")
                out[name] = (impl, {**extra, "GCONV_EE_HEAD_BACKWARD": strat})
    return out


def bench_ee(shapes, do_bench, quantiles):
    from gconv import ops
    from gconv import _backends as B
    rows = []
    compiled = torch.compile(ops.ee_head_reference, fullgraph=True)

    def _ref_for_bwd(z, w, v, r):   # own code object: its own compile cache (no donated buffers)
        return ops.ee_head_reference(z, w, v, r)

    compiled_bwd = torch.compile(_ref_for_bwd, fullgraph=True)
    providers = {"eager": None, "compile": None, **gconv_providers()}
    for shape_name in shapes:
        bsz, m, m_h, m_y = EE_SHAPES[shape_name]
        for gate in ("self", "frozen"):
            g = torch.Generator(device=DEV).manual_seed(0)
            z = torch.randn(bsz, m, device=DEV, generator=g)
            w = torch.randn(m_y, m_h, m + 1, device=DEV, generator=g) * (2.0 / (m + 1)) ** 0.5
            v = (torch.rand(m_y, m_h, device=DEV, generator=g) * 2 - 1) / m_h ** 0.5
            r = w.clone() if gate == "frozen" else None
            z.requires_grad_(gate == "self")
            w.requires_grad_(True)
            v.requires_grad_(gate == "self")
            leaves = [t for t in (z, w, v) if t.requires_grad]
            gout = torch.randn(bsz, m_y, device=DEV, generator=g)
            ref = None
            if bsz * m_h * m_y <= 4096 * 2340:   # float64 reference for the error column
                zz, ww, vv = (t.detach().double().requires_grad_() for t in (z, w, v))
                rout = ops.ee_head_reference(zz, ww, vv, None if r is None else r.double())
                ref = (rout, torch.autograd.grad(rout, [t for t, l in zip((zz, ww, vv), (z, w, v)) if l.requires_grad],
                                                 gout.double()))
            for mode in ("fwd", "bwd", "full"):
                row = {"op": "ee_head", "shape": shape_name, "dims(B,m,m_H,m_y)": [bsz, m, m_h, m_y], "gate": gate,
                       "mode": mode, "dtype": "float32"}
                for pname, spec in providers.items():
                    if pname == "eager":
                        fn, ctx = ops.ee_head_reference, contextlib.nullcontext()
                    elif pname == "compile" and mode == "bwd":
                        # backward timed alone needs retain_graph, which donated buffers forbid
                        fn, ctx = compiled_bwd, torch._functorch.config.patch(donated_buffer=False)
                    elif pname == "compile":
                        fn, ctx = compiled, contextlib.nullcontext()
                    else:
                        impl, extra = spec
                        fn = ops.ee_head
                        ctx = contextlib.ExitStack()
                        ctx.enter_context(env(**extra))
                        ctx.enter_context(B.use_backend(impl))
                    with ctx:
                        try:
                            res = _measure_ee(fn, z, w, v, r, leaves, gout, mode, do_bench, quantiles, ref)
                        except Exception as exc:  # record, keep going
                            res = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                    row[pname] = res
                _ratios(row, providers)
                rows.append(row)
                print(_line(row, providers), flush=True)
    return rows


def _measure_ee(fn, z, w, v, r, leaves, gout, mode, do_bench, quantiles, ref):
    def fwd():
        with torch.no_grad():
            return fn(z, w, v, r)

    def full():
        out = fn(z, w, v, r)
        out.backward(gout)

    for t in leaves:
        t.grad = None
    if mode == "fwd":
        call = fwd
    elif mode == "full":
        call = full
    else:
        out = fn(z, w, v, r)
        call = lambda: out.backward(gout, retain_graph=True)  # noqa: E731
    call()
    _sync()
    err = None
    if ref is not None and mode == "full":
        for t in leaves:
            t.grad = None
        out = fn(z, w, v, r)
        out.backward(gout)
        errs = [_rel(out, ref[0])] + [_rel(t.grad, rg) for t, rg in zip(leaves, ref[1])]
        err = max(errs)
    for t in leaves:
        t.grad = None
    _sync()
    base = _mem()
    _reset_peak()
    call()
    _sync()
    peak = _peak() - base
    ms = do_bench(call, grad_to_none=leaves if mode == "full" else None, quantiles=quantiles)
    res = {"median_ms": ms[0], "p20_ms": ms[1], "p80_ms": ms[2], "peak_bytes": peak}
    if err is not None:
        res["max_rel_err_vs_fp64"] = err
    return res


def _rel(x, ref):
    return ((x.double() - ref).abs().max() / ref.abs().max()).item()


def bench_softplus(n, do_bench, quantiles):
    import torch.nn.functional as F
    from gconv import ops
    from gconv import _backends as B
    rows = []
    src = torch.randn(n, device=DEV)
    dst = torch.empty_like(src)
    copy_ms = do_bench(lambda: dst.copy_(src), quantiles=quantiles)[0]
    copy_gbs = 2 * n * 4 / copy_ms / 1e6
    compiled = torch.compile(ops.softplus_reference, fullgraph=True)

    def _sp_for_bwd(z, zeta):
        return ops.softplus_reference(z, zeta)

    compiled_bwd = torch.compile(_sp_for_bwd, fullgraph=True)
    for dtype in (torch.float32, torch.bfloat16):
        z = (torch.randn(n, device=DEV) * 0.05).to(dtype).requires_grad_()
        gy = torch.randn(n, device=DEV).to(dtype)
        nbytes = n * z.element_size()
        providers = {"eager": (ops.softplus_reference, None), "compile": (compiled, None),
                     "torch-F.softplus": (lambda x, zeta: F.softplus(x, beta=zeta, threshold=20.0), None)}
        for impl in (("cuda", "triton") if DEV == "cuda" else ("cpp",)):
            ok, why = B._CHECKS["softplus"][impl](DEV)
            if ok:
                providers[f"gconv-{impl}"] = (ops.softplus, impl)
            else:
                print(f"[skip] softplus gconv-{impl}: {why}", file=sys.stderr)
        for mode, moved in (("fwd", 2), ("bwd", 3), ("full", 5)):
            row = {"op": "softplus", "shape": f"{n} elements", "dtype": str(dtype).replace("torch.", ""),
                   "mode": mode, "copy_GBps_fp32": copy_gbs}
            for pname, (fn, impl) in providers.items():
                ctx = B.use_backend(impl) if impl else contextlib.nullcontext()
                if pname == "compile" and mode == "bwd":
                    fn, ctx = compiled_bwd, torch._functorch.config.patch(donated_buffer=False)
                with ctx:
                    if mode == "fwd":
                        def call():
                            with torch.no_grad():
                                fn(z, 100.0)
                    elif mode == "full":
                        def call():
                            torch.autograd.grad(fn(z, 100.0), z, gy)
                    else:
                        y = fn(z, 100.0)

                        def call():
                            torch.autograd.grad(y, z, gy, retain_graph=True)
                    call()
                    _sync()
                    ms = do_bench(call, quantiles=quantiles)
                gbs = moved * nbytes / ms[0] / 1e6
                row[pname] = {"median_ms": ms[0], "p20_ms": ms[1], "p80_ms": ms[2], "GBps": gbs,
                              "fraction_of_copy_bandwidth": gbs / copy_gbs}
            _ratios(row, providers)
            rows.append(row)
            print(_line(row, providers), flush=True)
    return rows, copy_gbs


def _ratios(row, providers):
    for p in providers:
        res = row.get(p, {})
        for base in ("eager", "compile"):
            b = row.get(base, {})
            if "median_ms" in res and "median_ms" in b:
                res[f"speedup_vs_{base}"] = b["median_ms"] / res["median_ms"]


def _line(row, providers):
    parts = [f"{row['op']:8s} {row['shape']:14s} {str(row.get('gate', row.get('dtype'))):8s} {row['mode']:4s}"]
    for p in providers:
        res = row.get(p, {})
        if "median_ms" in res:
            parts.append(f"{p} {res['median_ms']:.3f}ms")
        else:
            parts.append(f"{p} ERR")
    return " | ".join(parts)


def targets(rows, copy_gbs):
    out = []
    for row in rows:
        if row["op"] == "ee_head" and row["shape"] == "mnist-b4096" and row["mode"] == "full":
            best = max((p for p in row if p.startswith("gconv") and "median_ms" in row[p]),
                       key=lambda p: row[p]["speedup_vs_eager"], default=None)
            if best is None:
                continue
            se, sc = row[best]["speedup_vs_eager"], row[best]["speedup_vs_compile"]
            out.append({"target": f"EE head full step, B=4096, gate={row['gate']}: ≥1.5× eager and ≥1.1× compile",
                        "best_provider": best, "speedup_vs_eager": se, "speedup_vs_compile": sc,
                        "met": se >= 1.5 and sc >= 1.1})
        if row["op"] == "softplus" and row["mode"] == "full":
            for p in ("gconv-cuda", "gconv-triton", "gconv-cpp"):
                if p in row:
                    f = row[p]["fraction_of_copy_bandwidth"]
                    out.append({"target": f"softplus fwd+bwd {row['dtype']} ≥ 85% of copy bandwidth ({p})",
                                "fraction": f, "met": f >= 0.85})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="gconv fused-layer GPU benchmarks")
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--selftest", action="store_true", help="run the script on CPU with tiny shapes (no numbers)")
    args = ap.parse_args(argv)
    global DEV
    if args.selftest:
        return _selftest(args)
    if not torch.cuda.is_available():
        why = "torch is a CPU build" if torch.version.cuda is None else "no CUDA device is visible"
        print(f"bench/gpu_layers.py needs a CUDA GPU: {why}", file=sys.stderr)
        return 2
    import triton.testing
    import gconv
    from gconv._utils import environment, to_jsonable

    def do_bench(fn, grad_to_none=None, quantiles=None):
        return triton.testing.do_bench(fn, grad_to_none=grad_to_none, quantiles=quantiles, warmup=50, rep=200)

    quantiles = [0.5, 0.2, 0.8]
    shapes = ["mnist-b64", "mnist-b4096"] if args.quick else list(EE_SHAPES)
    rows = bench_ee(shapes, do_bench, quantiles)
    sp_rows, copy_gbs = bench_softplus(16 * 2**20 if args.quick else 64 * 2**20, do_bench, quantiles)
    rows += sp_rows
    env_ = environment()
    result = {"device": env_.get("gpu"), "environment": env_, "backends": gconv.backends(),
              "copy_bandwidth_GBps_fp32": copy_gbs, "targets": targets(rows, copy_gbs), "results": rows}
    slug = "".join(c if c.isalnum() else "-" for c in (env_.get("gpu") or "gpu")).strip("-").lower()
    path = args.out or os.path.join(ROOT, "bench", "results", slug, "layers.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(to_jsonable(result), fh, indent=1)
    for t in result["targets"]:
        print(("MET   " if t["met"] else "MISSED ") + json.dumps(to_jsonable(t)))
    print("wrote", path)
    return 0


def _selftest(args):
    """Exercise every code path of this script on CPU (tiny shapes, a plain timer)."""
    import time
    global DEV
    DEV = "cpu"
    EE_SHAPES.clear()
    EE_SHAPES.update({"tiny": (33, 17, 9, 3), "mnist-b4096": (40, 24, 11, 2)})

    def do_bench(fn, grad_to_none=None, quantiles=None):
        ts = []
        for _ in range(3):
            for t in grad_to_none or ():
                t.grad = None
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        ts.sort()
        return [ts[1], ts[0], ts[2]]

    rows = bench_ee(list(EE_SHAPES), do_bench, [0.5, 0.2, 0.8])
    sp_rows, copy_gbs = bench_softplus(4096, do_bench, [0.5, 0.2, 0.8])
    tg = targets(rows + sp_rows, copy_gbs)
    bad = [r for r in rows + sp_rows for k, v in r.items() if isinstance(v, dict) and "error" in v]
    assert not bad, bad
    assert tg and all("met" in t for t in tg), tg
    errs = [r[p]["max_rel_err_vs_fp64"] for r in rows for p in r if isinstance(r[p], dict)
            and "max_rel_err_vs_fp64" in r[p]]
    assert errs and max(errs) < 1e-4, errs
    if args.out:
        from gconv._utils import to_jsonable
        with open(args.out, "w") as fh:
            json.dump(to_jsonable({"results": rows + sp_rows, "targets": tg}), fh)
    print(f"selftest ok: {len(rows) + len(sp_rows)} rows, {len(tg)} targets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
