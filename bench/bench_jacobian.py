"""gconv.jacobian (issue 4): NTK blocks, J·v / Jᵀ·u products, matrix-free least squares, LeNet alignment.

Baselines, measured in the same run at the same shapes:

* NTK blocks (``test_ntk``): the torch.func NTK tutorial's two methods, written out here —
  ``torch.func contraction`` (vmap(jacrev) per-sample Jacobians of both sides + einsum per parameter) and
  ``torch.func ntk-vp`` (vmap over the output basis of vjp on the x1 side followed by jvp on the x2 side);
  gconv's ``ntk`` with each method (structured, jacobian_contraction, ntk_vector_products, auto).
* products (``test_products``): one ``torch.func.jvp`` / ``torch.func.vjp`` of the whole batch vs
  ``Jacobian.mv`` / ``Jacobian.rmv``.
* least squares (``test_lstsq``): ``scipy.sparse.linalg.lsqr`` on ``Jacobian.to_scipy()`` (a
  LinearOperator) vs gconv's torch ``lsqr`` / ``lsmr`` on the Jacobian, both for the same fixed
  number of iterations (5 quick, 20 otherwise; atol = btol = 0), so they do the same work.
* the LeNet alignment check (``test_alignment``, gram and lsmr routes; no baseline: a pipeline).

Counted work (extra_info ``flops``, float32 GEMM bound), with F the forward flops of the batch counted by
``torch.utils.flop_counter.FlopCounterMode``: an NTK block n1×n2×m_y×m_y is the contraction of two
Jacobians, counted as 2·n1·n2·m_y²·d (d parameters; forming the Jacobians is not counted); J·v and
Jᵀ·u are 3F each (primal + two linear passes); k LSQR/LSMR iterations are k·6F.
Peak memory: RSS growth on CPU, allocator peak on CUDA (bench/core.py).

Sizes: NTK block sizes n ∈ {1, 2, 4, 8} (LeNet; quick), plus MLP 3×2048 and pre-activation ResNet-18 at
default; products on batches of 256 (ResNet-18: 32; GPU 4096 / 256); CUDA block sizes go to 64.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from gconv.nn import Softplus  # noqa: E402

from bench.core import pick, setting  # noqa: E402

DEVICE = setting("device")
CUDA = DEVICE == "cuda"


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


def digits_28(n=1000):
    """Real handwritten digits (scikit-learn's bundled 8×8 set, no download) upsampled to 28×28."""
    from sklearn.datasets import load_digits
    d = load_digits()
    X = torch.tensor(d.images[:n], dtype=torch.float32)[:, None] / 16.0
    X = torch.nn.functional.interpolate(X, size=(28, 28), mode="bilinear", align_corners=False)
    return (X - X.mean()) / X.std(), torch.tensor(d.target[:n])


# ------------------------------------------------------------------ benchmarks
BUDGET = "2GiB"
NTK_BUDGET = {"mlp": "2GiB", "lenet": "2GiB", "resnet18": "3GiB"}   # one ResNet-18 sample's rows: 0.45 GB + work
TF = ("torch.func contraction", "torch.func ntk-vp")
GCONV_NTK = ("gconv structured", "gconv jacobian_contraction", "gconv ntk_vector_products", "gconv auto")
NTK_CASES = ([("lenet", n) for n in pick([1, 2, 4, 8], [1, 2, 4, 8, 16] + ([32, 64] if CUDA else []))]
             + pick([], [("mlp", 2), ("resnet18", 2)] if not CUDA else [("mlp", 16), ("resnet18", 8)]))
PRODUCT_CASES = pick([("lenet", 4096 if CUDA else 256)],
                     [("mlp", 4096 if CUDA else 256), ("lenet", 4096 if CUDA else 256),
                      ("resnet18", 256 if CUDA else 32)])
BENCH_BASELINES = {"test_ntk": {"provider": TF},
                   "test_products": {"provider": ("torch.func",)},
                   "test_lstsq": {"provider": ("scipy lsqr",)}}
BENCH_PLOTS = [{"name": "ntk-vs-block", "function": "test_ntk", "x": "n", "series": "provider",
                "where": {"model": "lenet"}, "title": "LeNet-5 NTK block (n×n×10×10) vs block size"}]
_MODELS: dict = {}


def _model(name):
    if name not in _MODELS:
        _MODELS.clear()
        m, shape = build(name)
        _MODELS[name] = (m.to(DEVICE), shape)
    return _MODELS[name]


def forward_flops(model, X) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(X)
    return fc.get_total_flops()


@pytest.mark.parametrize("provider", TF + GCONV_NTK)
@pytest.mark.parametrize("model,n", NTK_CASES)
def test_ntk(benchmark, model, n, provider, bench_seed):
    """NTK block Θ(x1, x2) of n×n samples, m_y = 10; flops 2·n²·m_y²·d; rel. error vs the contraction."""
    from gconv.jacobian import ntk
    net, shape = _model(model)
    g = torch.Generator(device=DEVICE).manual_seed(bench_seed)
    x1 = torch.randn(n, *shape, generator=g, device=DEVICE)
    x2 = torch.randn(n, *shape, generator=g, device=DEVICE)
    params = {k: v.detach() for k, v in net.named_parameters()}
    d = sum(p.numel() for p in params.values())
    if provider == "torch.func contraction":
        def fn():
            return tf_ntk_contraction(net, params, x1, x2)
    elif provider == "torch.func ntk-vp":
        def fn():
            return tf_ntk_vp(net, params, x1, x2)
    else:
        method = provider.removeprefix("gconv ")

        def fn():
            return ntk(net, x1, x2, method=method, memory_budget=NTK_BUDGET[model])
    ref = tf_ntk_contraction(net, params, x1, x2)
    out = fn()                                                          # warm-up and correctness
    err = float((out - ref).abs().max() / ref.abs().max())
    assert err < 1e-3, f"{provider}: relative error {err:.2e} against the torch.func contraction"
    del out, ref
    benchmark.group = f"ntk {model} n={n}"
    benchmark.extra_info.update(d=d, m_y=10, flops=2 * n * n * 100 * d, flops_dtype="float32", rel_err=err)
    benchmark.pedantic(fn, rounds=pick(3, 5 if model != "resnet18" else 2), iterations=1, warmup_rounds=0)


@pytest.mark.parametrize("provider", ["torch.func", "gconv"])
@pytest.mark.parametrize("product", ["Jv", "JTu"])
@pytest.mark.parametrize("model,batch", PRODUCT_CASES)
def test_products(benchmark, model, batch, product, provider, bench_seed):
    """J·v (forward mode) / Jᵀ·u (reverse mode) over the whole batch; flops 3F each."""
    from gconv.jacobian import Jacobian
    net, shape = _model(model)
    g = torch.Generator(device=DEVICE).manual_seed(bench_seed)
    X = torch.randn(batch, *shape, generator=g, device=DEVICE)
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = dict(net.named_buffers())
    v = {k: torch.randn(p.shape, generator=g, device=DEVICE) for k, p in params.items()}
    u = torch.randn(batch, 10, generator=g, device=DEVICE)

    def f(p):
        return functional_call(net, (p, buffers), (X,))
    if provider == "gconv":
        J = Jacobian(net, X, memory_budget=BUDGET)
        vf, uf = J.tm.flatten(v), u.reshape(-1)
        fn = (lambda: J.mv(vf)) if product == "Jv" else (lambda: J.rmv(uf))
        benchmark.extra_info.update(chunk_jv=J.chunk_jv, chunk_vjp=J.chunk_vjp)
    else:
        fn = (lambda: jvp(f, (params,), (v,))[1]) if product == "Jv" else (lambda: vjp(f, params)[1](u))
    fn()
    benchmark.group = f"products {model} {product} batch={batch}"
    benchmark.extra_info.update(flops=3 * forward_flops(net, X), flops_dtype="float32")
    benchmark.pedantic(fn, rounds=pick(5, 5 if model != "resnet18" else 3), iterations=1, warmup_rounds=1)


LSTSQ_ITERS = pick(5, 20)
LSTSQ_N = pick(64, 128)


@pytest.mark.parametrize("provider", ["scipy lsqr", "gconv lsqr", "gconv lsmr"])
def test_lstsq(benchmark, provider, bench_seed):
    """min ‖J θ − y‖ on LeNet-5's Jacobian at LSTSQ_N digits × 10 outputs, LSTSQ_ITERS iterations each
    (5 quick, 20 otherwise); flops LSTSQ_ITERS·6F."""
    from scipy.sparse.linalg import lsqr as scipy_lsqr

    from gconv.jacobian import Jacobian, lsmr, lsqr
    net, _ = _model("lenet")       # on CUDA, scipy's products cross the bus: the comparison a user faces
    X, _y = digits_28(LSTSQ_N)
    X = X.to(DEVICE)
    J = Jacobian(net, X, memory_budget=BUDGET)
    b = torch.randn(J.shape[0], generator=torch.Generator(device=DEVICE).manual_seed(bench_seed), device=DEVICE)
    if provider == "scipy lsqr":
        op, bn = J.to_scipy(), b.cpu().numpy()

        def fn():
            return scipy_lsqr(op, bn, atol=0.0, btol=0.0, conlim=0.0, iter_lim=LSTSQ_ITERS)
    else:
        solver = lsqr if provider == "gconv lsqr" else lsmr

        def fn():
            return solver(J, b, atol=0.0, btol=0.0, conlim=0.0, maxiter=LSTSQ_ITERS)
    fn()
    benchmark.group = f"lstsq lenet {J.shape[0]}x{J.shape[1]}"
    benchmark.extra_info.update(iterations=LSTSQ_ITERS, flops=LSTSQ_ITERS * 6 * forward_flops(net, X),
                                flops_dtype="float32")
    benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=0)


@pytest.mark.parametrize("route", ["gram", "lsmr"])
def test_alignment(benchmark, route):
    """LeNet-5 alignment check (cross-entropy, m_y = 10) on 100 (quick) / 1,000 real digits, float32; the
    lsmr route stops after 10 (quick) / 30 iterations."""
    from gconv.jacobian import alignment
    net, _ = _model("lenet")
    X, y = digits_28(pick(100, 1000))
    X, y = X.to(DEVICE), y.to(DEVICE)
    out = {}

    def fn():
        out["r"] = alignment(net, (X, y), "cross_entropy", method=route, memory_budget=BUDGET,
                             maxiter=pick(10, 30) if route == "lsmr" else None, progress=False)
    benchmark.group = f"alignment lenet n={X.shape[0]}"
    benchmark.pedantic(fn, rounds=1, iterations=1, warmup_rounds=0)
    r = out["r"]
    benchmark.extra_info.update(n=X.shape[0], verdict=r.verdict, relative_residual=r.relative_residual,
                                iterations=r.iterations, istop=r.istop)


def _memory_child(budget, n, q):
    import resource

    from gconv._utils import current_rss_bytes
    from gconv.jacobian import ntk_gram
    torch.set_num_threads(1)
    model, shape = build("lenet")
    X = torch.randn(n, *shape, generator=torch.Generator().manual_seed(3))
    ntk_gram(model, X[:4], trace=True, memory_budget=budget, method="jacobian_contraction")   # warm-up
    base = current_rss_bytes()
    K = ntk_gram(model, X, trace=True, memory_budget=budget, method="jacobian_contraction")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    q.put(dict(peak_rss_growth=peak - base, output_bytes=K.numel() * K.element_size()))


@pytest.mark.skipif(CUDA, reason="a CPU memory-budget check (RSS in a fresh process)")
@pytest.mark.parametrize("budget", pick(
    [pytest.param("64MB", marks=pytest.mark.skip(reason="default and full modes only (~1 min per budget on 2 cores)"))],
    ["64MB", "256MB", "1GiB"]))
def test_ntk_gram_budget(benchmark, budget):
    """Streamed LeNet NTK Gram (trace, contraction, n = 2000) under a memory budget: time here, and the peak
    RSS growth of the same call in a fresh process (the allocator keeps what earlier tests freed); the dense
    J alone would be n·10·61,706·4 B = 4.9 GB."""
    import multiprocessing as mp
    from gconv.jacobian import ntk_gram
    from gconv._utils import parse_bytes
    n = 2000
    model, shape = build("lenet")
    X = torch.randn(n, *shape, generator=torch.Generator().manual_seed(3))
    benchmark.group = f"ntk_gram lenet n={n} budget"
    benchmark.pedantic(lambda: ntk_gram(model, X, trace=True, memory_budget=budget, method="jacobian_contraction"),
                       rounds=1, iterations=1, warmup_rounds=0)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_memory_child, args=(budget, n, q))
    p.start()
    r = q.get(timeout=1800)
    p.join()
    benchmark.extra_info.update(fresh_process_peak_rss_growth=r["peak_rss_growth"], budget_bytes=parse_bytes(budget))
    assert r["peak_rss_growth"] <= 1.25 * parse_bytes(budget) + 300e6, r


if __name__ == "__main__":        # python bench/bench_jacobian.py [--quick|--full] [--device cuda] ...: this suite alone
    from bench.__main__ import main
    sys.exit(main(["run", "--suite", "jacobian", *sys.argv[1:]]))
