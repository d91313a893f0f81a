"""The measuring core shared by every suite: statistics of one benchmark, peak memory, the GPU timer.

On CPU a suite's ``benchmark`` fixture is pytest-benchmark's, wrapped (:class:`CpuBenchmark`) so that
peak memory and the statistics land in the run's record.  On CUDA it is :class:`CudaBenchmark`: the
same ``benchmark(fn)`` / ``benchmark.pedantic(...)`` surface, timed with ``triton.testing.do_bench``
(medians of CUDA-event times after warm-up; L2 flushed between calls).  A suite file therefore runs
unchanged on both devices.
"""
from __future__ import annotations

import gc
import statistics
import threading
import time

QUANTILE_KEYS = ("median", "q1", "q3", "iqr", "min", "max", "mean", "stddev", "rounds")


def summarize(times: list) -> dict:
    """Stats of a list of per-call seconds, in the keys pytest-benchmark uses (quartiles by its method)."""
    if not times:
        raise ValueError("no timings to summarize")
    ts = sorted(float(t) for t in times)
    n = len(ts)
    if n >= 2:
        q1, _, q3 = statistics.quantiles(ts, n=4, method="inclusive") if n >= 2 else (ts[0], ts[0], ts[0])
    else:
        q1 = q3 = ts[0]
    return {"median": statistics.median(ts), "q1": q1, "q3": q3, "iqr": q3 - q1, "min": ts[0], "max": ts[-1],
            "mean": statistics.fmean(ts), "stddev": statistics.stdev(ts) if n > 1 else 0.0, "rounds": n}


class PeakRSS:
    """Peak resident-set growth above the level at entry, sampled by a background thread (CPU tensors
    and NumPy arrays have no allocator counter).  Memory a previous test freed back to the allocator is
    reused without growing the RSS, so this is a lower bound of what the call needs on its own."""

    def __init__(self, period=0.005):
        self.period, self.base, self.peak = period, 0, 0
        self._stop = threading.Event()

    def __enter__(self):
        from gconv._utils import current_rss_bytes
        self._rss = current_rss_bytes
        gc.collect()
        self.base = self.peak = self._rss()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(self.period):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth(self) -> int:
        return self.peak - self.base


def instrument(fixture):
    """pytest-benchmark's fixture with peak-RSS sampling around ``fixture(...)`` / ``fixture.pedantic(...)``
    (patched on the instance: pytest-benchmark insists on its own fixture type)."""
    pedantic = fixture.pedantic
    fixture.peak_bytes = None

    def measured(fn):
        def go(*a, **k):
            with PeakRSS() as m:
                out = fn(*a, **k)
            fixture.peak_bytes = m.growth
            return out
        return go
    fixture.pedantic = measured(pedantic)
    base = type(fixture)
    fixture.__class__ = type("Measured" + base.__name__, (base,), {"__call__": lambda self, *a, **k: measured(
        lambda *a2, **k2: base.__call__(self, *a2, **k2))(*a, **k)})
    return fixture


def cpu_record(fixture) -> dict:
    meta = getattr(fixture, "stats", None)
    st = getattr(meta, "stats", None)
    stats = None if st is None else {k: float(getattr(st, k)) if k != "rounds" else int(st.rounds)
                                     for k in QUANTILE_KEYS}
    return {"group": fixture.group, "extra_info": dict(fixture.extra_info), "stats": stats,
            "timer": "pytest-benchmark (time.perf_counter)", "peak_bytes": getattr(fixture, "peak_bytes", None),
            "peak_kind": "RSS growth (sampled)"}


class CudaBenchmark:
    """``benchmark`` for CUDA: triton.testing.do_bench for calls under ``long_s``; a call that takes
    longer is timed ``rounds`` times with CUDA events (do_bench's 5-call estimate plus warm-up would
    multiply minutes-long runs).  Per-call ``setup`` (pedantic) is honoured with CUDA events too."""

    def __init__(self, warmup_ms=25, rep_ms=100, long_s=1.0):
        self.group, self.extra_info = None, {}
        self.warmup_ms, self.rep_ms, self.long_s = warmup_ms, rep_ms, long_s
        self.stats, self.peak_bytes, self.timer = None, None, None

    def __call__(self, fn, *args, **kwargs):
        return self.pedantic(fn, args, kwargs)

    def pedantic(self, target, args=(), kwargs=None, setup=None, rounds=1, warmup_rounds=0, iterations=1):
        import torch
        kwargs = kwargs or {}

        def prepared():
            if setup is None:
                return args, kwargs
            got = setup()
            return got if got is not None else (args, kwargs)

        torch.cuda.synchronize()
        gc.collect()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        a, k = prepared()
        t0 = time.perf_counter()
        result = target(*a, **k)
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        self.peak_bytes = torch.cuda.max_memory_allocated() - base
        if setup is None and first < self.long_s:
            from triton.testing import do_bench
            times_ms = do_bench(lambda: target(*args, **kwargs), warmup=self.warmup_ms, rep=self.rep_ms,
                                return_mode="all")
            self.timer = "triton.testing.do_bench (CUDA events, L2 flushed)"
        else:
            times_ms = []
            for i in range(warmup_rounds + max(rounds, 1)):         # the rounds the suite asked for
                a, k = prepared()
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                s.record()
                target(*a, **k)
                e.record()
                torch.cuda.synchronize()
                if i >= warmup_rounds:
                    times_ms.append(s.elapsed_time(e))
            self.timer = "CUDA events (per-call setup or long call)"
        self.stats = summarize([t / 1e3 for t in times_ms])
        return result

    def record(self) -> dict:
        return {"group": self.group, "extra_info": dict(self.extra_info), "stats": self.stats, "timer": self.timer,
                "peak_bytes": self.peak_bytes, "peak_kind": "torch.cuda.max_memory_allocated growth"}


_DEFAULTS = {"device": "cpu", "mode": "default", "seed": "0"}


def setting(name: str):
    """The run's ``device`` (cpu|cuda), ``mode`` (quick|default|full) or ``seed`` (int), from the
    environment the runner sets (GCONV_BENCH_DEVICE / _MODE / _SEED)."""
    import os
    v = os.environ.get(f"GCONV_BENCH_{name.upper()}", _DEFAULTS[name])
    if name == "device" and v not in ("cpu", "cuda"):
        raise ValueError(f"GCONV_BENCH_DEVICE must be cpu or cuda, got {v!r}")
    if name == "mode" and v not in ("quick", "default", "full"):
        raise ValueError(f"GCONV_BENCH_MODE must be quick, default or full, got {v!r}")
    return int(v) if name == "seed" else v


def pick(quick, default=None, full=None):
    """The value for the current mode (default falls back to quick, full to default)."""
    mode = setting("mode")
    default = quick if default is None else default
    return {"quick": quick, "default": default, "full": default if full is None else full}[mode]
