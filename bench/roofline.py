"""Roofline probes, measured once per run on the run's device.

* copy bandwidth: ``dst.copy_(src)`` of a ``size``-byte float32 buffer; bytes moved = 2·size (read + write).
* GEMM rate: ``torch.mm`` of two N×N matrices; flops = 2·N³.  float64 and float32 everywhere; on CUDA
  also tf32 (float32 with ``allow_tf32``) and bfloat16.

A benchmark states what it moves or computes in ``extra_info`` (``bytes`` and/or ``flops``, with the
dtype of its dominant GEMM in ``flops_dtype``; counted in its docstring), and the report divides the
achieved rate by the matching bound: ``fraction = (bytes / t) / copy_Bps`` or ``(flops / t) / gemm[dtype]``.
"""
from __future__ import annotations

import time

from bench.core import summarize


def _time(fn, device, reps):
    import torch
    if device == "cuda":
        from triton.testing import do_bench
        return summarize([t / 1e3 for t in do_bench(fn, warmup=25, rep=200, return_mode="all")])
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return summarize(ts)


def measure(device: str = "cpu", copy_bytes: int | None = None, gemm_n: int | None = None, reps: int = 7) -> dict:
    """{'copy_Bps', 'copy': stats, 'gemm_flops': {dtype: flop/s}, 'gemm': {dtype: stats}, sizes}."""
    import torch
    cuda = device == "cuda"
    copy_bytes = copy_bytes or (1 << 30 if cuda else 256 << 20)
    gemm_n = gemm_n or (8192 if cuda else 2048)
    src = torch.rand(copy_bytes // 4, device=device)
    dst = torch.empty_like(src)
    st = _time(lambda: dst.copy_(src), device, reps)
    out = {"device": device, "copy_size_bytes": copy_bytes, "gemm_n": gemm_n, "copy": st,
           "copy_Bps": 2 * copy_bytes / st["median"], "gemm": {}, "gemm_flops": {}}
    del src, dst
    dtypes = [("float64", torch.float64, False), ("float32", torch.float32, False)]
    if cuda:
        dtypes += [("tf32", torch.float32, True), ("bfloat16", torch.bfloat16, False)]
    for label, dt, tf32 in dtypes:
        n = gemm_n if not (cuda and dt == torch.float64) else gemm_n // 2
        a = torch.randn(n, n, device=device, dtype=dt)
        b = torch.randn(n, n, device=device, dtype=dt)
        old = torch.backends.cuda.matmul.allow_tf32 if cuda else None
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            st = _time(lambda: torch.mm(a, b), device, max(3, reps // 2))
        finally:
            if cuda:
                torch.backends.cuda.matmul.allow_tf32 = old
        out["gemm"][label] = dict(st, n=n)
        out["gemm_flops"][label] = 2 * n ** 3 / st["median"]
    return out


def fraction(record: dict, roof: dict) -> tuple[float | None, str | None]:
    """(fraction of the bound, which bound) for one benchmark record, or (None, None) when it counts nothing."""
    info, st = record.get("extra_info") or {}, record.get("stats")
    if not st or not roof:
        return None, None
    t = st["median"]
    cands = []
    if info.get("flops"):
        dt = info.get("flops_dtype", "float32")
        rate = roof.get("gemm_flops", {}).get(dt)
        if rate:
            cands.append((info["flops"] / t / rate, f"GEMM {dt}"))
    if info.get("bytes") and roof.get("copy_Bps"):
        cands.append((info["bytes"] / t / roof["copy_Bps"], "copy bandwidth"))
    if not cands:
        return None, None
    return max(cands)   # the binding bound is the one the kernel comes closest to
