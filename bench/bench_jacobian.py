"""gconv.jacobian benchmarks (CPU): NTK blocks, J·v / Jᵀ·u throughput, the LeNet alignment check.

Baselines are the torch.func NTK tutorial's two methods, written out here at the same shapes:

* ``torch.func contraction``  — vmap(jacrev) per-sample Jacobians of both sides + einsum per parameter;
* ``torch.func ntk-vp``       — vmap over the output basis of vjp (x1 side) followed by jvp (x2 side);

and, for products, one ``torch.func.jvp`` / ``torch.func.vjp`` of the whole batch.

Run the full report (time, peak memory, ratios against the best baseline measured in the same run;
JSON under bench/results/)::

    python bench/bench_jacobian.py [--quick] [--threads 2]

or the pytest-benchmark entries::

    python -m pytest bench/bench_jacobian.py --benchmark-only

Peak memory is the peak resident-set growth above the level before the call, sampled every 2 ms by
a background thread (CPU tensors have no allocator counter).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import threading
import time

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gconv._utils import current_rss_bytes, environment, format_bytes  # noqa: E402
from gconv.nn import Softplus  # noqa: E402


# ------------------------------------------------------------------ models (28×28 inputs, 10 outputs)
class MLP3x2048(nn.Module):
    def __init__(self, d_in=100, width=2048, m_y=10):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, width), Softplus(100.0), nn.Linear(width, width), Softplus(100.0),
                                 nn.Linear(width, width), Softplus(100.0), nn.Linear(width, m_y))

    def forward(self, x):
        return self.net(x)


class LeNet5(nn.Module):
    def __init__(self, m_y=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), Softplus(100.0), nn.AvgPool2d(2),
                                      nn.Conv2d(6, 16, 5), Softplus(100.0), nn.AvgPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(400, 120), Softplus(100.0), nn.Linear(120, 84), Softplus(100.0),
                                        nn.Linear(84, m_y))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class _PreAct(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.act = Softplus(100.0)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        o = self.act(self.bn1(x))
        sc = self.shortcut(o) if self.shortcut is not None else x
        return self.conv2(self.act(self.bn2(self.conv1(o)))) + sc


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 (seed 002/003 experiments) with softplus(100), 1×28×28 inputs."""

    def __init__(self, m_y=10):
        super().__init__()
        self.stem = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_PreAct(cin, cout, stride), _PreAct(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn, self.act, self.fc = nn.BatchNorm2d(512), Softplus(100.0), nn.Linear(512, m_y)

    def forward(self, x):
        return self.fc(self.act(self.bn(self.layers(self.stem(x)))).mean((2, 3)))


def build(name):
    torch.manual_seed(0)
    if name == "mlp":
        return MLP3x2048().eval(), (100,)
    if name == "lenet":
        return LeNet5().eval(), (1, 28, 28)
    if name == "resnet18":
        m = PreActResNet18()
        with torch.no_grad():                      # non-trivial running statistics, then eval mode
            m.train()
            m(torch.randn(16, 1, 28, 28))
        return m.eval(), (1, 28, 28)
    raise KeyError(name)


# ------------------------------------------------------------------ the torch.func tutorial's methods
def _single(model):
    buffers = dict(model.named_buffers())

    def f(params, x):
        return functional_call(model, (params, buffers), (x.unsqueeze(0),)).squeeze(0)
    return f


def tf_ntk_contraction(model, params, x1, x2):
    f = _single(model)
    j1 = vmap(jacrev(f), (None, 0))(params, x1)
    j1 = [j.flatten(2) for j in j1.values()]
    j2 = vmap(jacrev(f), (None, 0))(params, x2)
    j2 = [j.flatten(2) for j in j2.values()]
    return sum(torch.einsum("Naf,Mbf->NMab", a, b) for a, b in zip(j1, j2))


def tf_ntk_vp(model, params, x1, x2):
    f = _single(model)

    def block(a, b):
        out, vjp_fn = vjp(lambda p: f(p, a), params)

        def col(vec):
            return jvp(lambda p: f(p, b), (params,), vjp_fn(vec))[1]
        basis = torch.eye(out.numel(), dtype=out.dtype).view(out.numel(), -1)
        return vmap(col)(basis)
    return vmap(vmap(block, (None, 0)), (0, None))(x1, x2)


# ------------------------------------------------------------------ measurement
class PeakRSS:
    def __init__(self, period=0.002):
        self.period, self.peak, self._stop = period, 0, threading.Event()

    def __enter__(self):
        gc.collect()
        self.base = current_rss_bytes()
        self.peak = self.base
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_bytes())
            time.sleep(self.period)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, current_rss_bytes())

    @property
    def growth(self):
        return self.peak - self.base


def measure(cands: dict, repeat=3, check=None) -> dict:
    """{label: fn} → {label: (median seconds, peak RSS growth, check(first output))}; the timed rounds
    interleave the candidates so that a changing machine load affects all of them alike."""
    mem, chk = {}, {}
    for label, fn in cands.items():
        with PeakRSS() as m:                        # first call: warm-up, memory, correctness
            out = fn()
        chk[label] = check(out) if check is not None else None
        del out
        mem[label] = m.growth
    times = {label: [] for label in cands}
    for _ in range(repeat):
        for label, fn in cands.items():
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    return {label: (statistics.median(times[label]), mem[label], chk[label]) for label in cands}


# ------------------------------------------------------------------ benchmark sections
NTK_SHAPES = {"mlp": 2, "lenet": 16, "resnet18": 2}
PRODUCT_BATCH = {"mlp": 256, "lenet": 256, "resnet18": 32}
BUDGET = "2GiB"
REPEAT = {"resnet18": 2}
NTK_BUDGET = {"mlp": "2GiB", "lenet": "2GiB", "resnet18": "3GiB"}   # one ResNet-18 sample's rows: 0.45 GB + work


def bench_ntk(name, n=None, repeat=5):
    from gconv.jacobian import ntk, Jacobian, ntk_cost_model
    model, shape = build(name)
    n = n or NTK_SHAPES[name]
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(n, *shape, generator=g), torch.randn(n, *shape, generator=g)
    params = {k: v.detach() for k, v in model.named_parameters()}
    rows = {}
    ref = tf_ntk_contraction(model, params, x1, x2)
    cands = {
        "torch.func contraction": lambda: tf_ntk_contraction(model, params, x1, x2),
        "torch.func ntk-vp": lambda: tf_ntk_vp(model, params, x1, x2),
    }
    for m in ("structured", "jacobian_contraction", "ntk_vector_products", "auto"):
        cands[f"gconv {m}"] = (lambda m=m: ntk(model, x1, x2, method=m, memory_budget=NTK_BUDGET[name]))
    def err(out):
        return float((out - ref).abs().max() / ref.abs().max())
    for label, (t, mem, e) in measure(cands, REPEAT.get(name, repeat), err).items():
        rows[label] = dict(seconds=t, peak_rss_growth=mem, rel_err_vs_contraction=e)
        print(f"  {name:9s} NTK {n}x{n}x10x10  {label:28s} {t * 1e3:10.1f} ms  peak +{format_bytes(mem):>10s}"
              f"  rel.err {e:.1e}", flush=True)
    best = min(rows[k]["seconds"] for k in rows if k.startswith("torch.func"))
    for k in rows:
        rows[k]["speedup_vs_best_torch_func"] = best / rows[k]["seconds"]
    auto = ntk_cost_model(Jacobian(model, x1, memory_budget=NTK_BUDGET[name]), n, n, symmetric=False)["choice"]
    return dict(model=name, n1=n, n2=n, m_y=10, d=sum(p.numel() for p in model.parameters()), auto_choice=auto,
                methods=rows)


def bench_products(name, n=None, repeat=5):
    from gconv.jacobian import Jacobian
    model, shape = build(name)
    n = n or PRODUCT_BATCH[name]
    X = torch.randn(n, *shape, generator=torch.Generator().manual_seed(2))
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    v = {k: torch.randn_like(p) for k, p in params.items()}
    u = torch.randn(n, 10)

    def f(p):
        return functional_call(model, (p, buffers), (X,))
    J = Jacobian(model, X, memory_budget=BUDGET)
    vf = J.tm.flatten(v)
    uf = u.reshape(-1)
    res = {}
    cands = {"torch.func.jvp (whole batch)": lambda: jvp(f, (params,), (v,))[1],
             "gconv Jacobian.mv": lambda: J.mv(vf),
             "torch.func.vjp (whole batch)": lambda: vjp(f, params)[1](u),
             "gconv Jacobian.rmv": lambda: J.rmv(uf)}
    for label, (t, mem, _) in measure(cands, REPEAT.get(name, repeat)).items():
        res[label] = dict(seconds=t, samples_per_s=n / t, peak_rss_growth=mem)
        print(f"  {name:9s} products n={n:<5d} {label:30s} {t * 1e3:9.1f} ms  {n / t:10.0f} samples/s  peak "
              f"+{format_bytes(mem)}", flush=True)
    res["mv_ratio"] = res["torch.func.jvp (whole batch)"]["seconds"] / res["gconv Jacobian.mv"]["seconds"]
    res["rmv_ratio"] = res["torch.func.vjp (whole batch)"]["seconds"] / res["gconv Jacobian.rmv"]["seconds"]
    return dict(model=name, n=n, chunk_jv=J.chunk_jv, chunk_vjp=J.chunk_vjp, results=res)


def digits_28(n=1000):
    """Real handwritten digits (scikit-learn's bundled 8×8 set, no download) upsampled to 28×28."""
    from sklearn.datasets import load_digits
    d = load_digits()
    X = torch.tensor(d.images[:n], dtype=torch.float32)[:, None] / 16.0
    X = torch.nn.functional.interpolate(X, size=(28, 28), mode="bilinear", align_corners=False)
    return (X - X.mean()) / X.std(), torch.tensor(d.target[:n])


def bench_alignment(n=1000, methods=("gram", "lsmr"), dtype=torch.float32, maxiter=None):
    from gconv.jacobian import alignment
    X, y = digits_28(n)
    model, _ = build("lenet")
    model = model.to(dtype)
    out = {}
    for method in methods:
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            r = alignment(model, (X.to(dtype), y), "cross_entropy", method=method, memory_budget=BUDGET,
                          maxiter=maxiter, progress=False)
        t = time.perf_counter() - t0
        out[method] = dict(seconds=t, verdict=r.verdict, relative_residual=r.relative_residual,
                           iterations=r.iterations, istop=r.istop, peak_rss_growth=mem.growth, message=r.message)
        print(f"  LeNet alignment n={n} m_y=10 ({str(dtype)[6:]}) {method:5s}: {r.verdict:13s} {t:7.1f} s  "
              f"‖r‖/‖Y‖={r.relative_residual:.2e} it={r.iterations} peak +{format_bytes(mem.growth)}", flush=True)
    return dict(n=n, m_y=10, d=sum(p.numel() for p in model.parameters()), dtype=str(dtype), methods=out)


def _memory_child(budget, n, q):
    import resource
    from gconv.jacobian import ntk_gram
    torch.set_num_threads(1)
    model, shape = build("lenet")
    X = torch.randn(n, *shape, generator=torch.Generator().manual_seed(3))
    ntk_gram(model, X[:4], trace=True, memory_budget=budget, method="jacobian_contraction")   # warm-up
    base = current_rss_bytes()
    t0 = time.perf_counter()
    K = ntk_gram(model, X, trace=True, memory_budget=budget, method="jacobian_contraction")
    t = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    q.put(dict(budget=budget, n=n, seconds=t, peak_rss_growth=peak - base, output_bytes=K.numel() * K.element_size()))


def bench_memory(n=2000, budgets=("64MB", "256MB", "1GiB")):
    """Peak memory of a streamed LeNet NTK Gram (trace, contraction) against the budget, each in a fresh
    process (the allocator keeps what a previous run freed); the dense J alone would be n·10·61,706·4 B."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    out = []
    for b in budgets:
        q = ctx.Queue()
        p = ctx.Process(target=_memory_child, args=(b, n, q))
        p.start()
        r = q.get()
        p.join()
        out.append(r)
        print(f"  lenet ntk_gram n={n} trace contraction budget {b:>6s}: {r['seconds']:6.1f} s  peak +"
              f"{format_bytes(r['peak_rss_growth'])} (output {format_bytes(r['output_bytes'])}; dense J would be "
              f"{format_bytes(n * 10 * 61706 * 4)})", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="LeNet only, smaller alignment check")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--models", nargs="*", default=None, help="mlp lenet resnet18 (default: all)")
    p.add_argument("--sections", nargs="*", default=["ntk", "products", "memory", "alignment"])
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    models = a.models or (["lenet"] if a.quick else ["mlp", "lenet", "resnet18"])
    report = dict(environment=environment(), threads=torch.get_num_threads(), budget=BUDGET, ntk_budget=NTK_BUDGET,
                  ntk=[], products=[], alignment=[], load_average_before=os.getloadavg())
    os.makedirs(a.out, exist_ok=True)
    tag = f"t{torch.get_num_threads()}-" + "-".join(a.sections) + "-" + "-".join(models) + ("-quick" if a.quick else "")
    path = os.path.join(a.out, f"jacobian-cpu-{os.cpu_count()}cores-{tag}.json")
    from gconv._utils import dumps

    def save():
        report["load_average_after"] = os.getloadavg()
        with open(path, "w") as fh:
            fh.write(dumps(report, indent=1))
    print(f"gconv.jacobian benchmarks on {report['environment']['cpu']} ({torch.get_num_threads()} threads), "
          f"load average {os.getloadavg()}")
    if "ntk" in a.sections:
        for m in models:
            report["ntk"].append(bench_ntk(m))
            save()
    if "products" in a.sections:
        for m in models:
            report["products"].append(bench_products(m))
            save()
    if "memory" in a.sections:
        report["memory"] = bench_memory()
        save()
    if "alignment" in a.sections:
        n = 200 if a.quick else 1000
        for args in ((("gram",), torch.float64), (("gram",), torch.float32)):
            report["alignment"].append(bench_alignment(n, *args))
            save()
        report["alignment"].append(bench_alignment(n, ("lsmr",), torch.float32, maxiter=30))
        save()
    print("wrote", path)
    return 0


# ------------------------------------------------------------------ pytest-benchmark entries
try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:
    @pytest.mark.parametrize("method", ["torch.func contraction", "torch.func ntk-vp", "structured",
                                        "jacobian_contraction", "auto"])
    @pytest.mark.parametrize("name", ["mlp", "lenet"])
    def test_bench_ntk_block(benchmark, name, method):
        from gconv.jacobian import ntk
        model, shape = build(name)
        n = NTK_SHAPES[name]
        g = torch.Generator().manual_seed(1)
        x1, x2 = torch.randn(n, *shape, generator=g), torch.randn(n, *shape, generator=g)
        params = {k: v.detach() for k, v in model.named_parameters()}
        fn = {"torch.func contraction": lambda: tf_ntk_contraction(model, params, x1, x2),
              "torch.func ntk-vp": lambda: tf_ntk_vp(model, params, x1, x2)}.get(
            method, lambda: ntk(model, x1, x2, method=method, memory_budget=BUDGET))
        benchmark.group = f"ntk-{name}"
        benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)

    @pytest.mark.parametrize("op", ["jvp", "mv", "vjp", "rmv"])
    def test_bench_products_lenet(benchmark, op):
        from gconv.jacobian import Jacobian
        model, shape = build("lenet")
        X = torch.randn(256, *shape)
        params = {k: v.detach() for k, v in model.named_parameters()}
        v = {k: torch.randn_like(p) for k, p in params.items()}
        u = torch.randn(256, 10)
        J = Jacobian(model, X, memory_budget=BUDGET)

        def f(p):
            return functional_call(model, p, (X,))
        fn = {"jvp": lambda: jvp(f, (params,), (v,)), "vjp": lambda: vjp(f, params)[1](u),
              "mv": lambda: J.mv(J.tm.flatten(v)), "rmv": lambda: J.rmv(u.reshape(-1))}[op]
        benchmark.group = "products-lenet"
        benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)


if __name__ == "__main__":
    sys.exit(main())
