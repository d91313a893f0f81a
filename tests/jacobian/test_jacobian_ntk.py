"""ntk / ntk_gram equal J Jᵀ (float64 jacrev reference) for every method, layout and model."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from gconv.jacobian import Jacobian, ntk, ntk_cost_model, ntk_gram
from gconv.jacobian.ntk import StructuredPlan, gram_blocks

from _jacobian_models import MLP, make, reference_jacobian

METHODS = ["jacobian_contraction", "ntk_vector_products", "structured", "auto"]


def _close(a, b, rtol=1e-5, atol=1e-8):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def _layouts(K, n, m):
    K4 = K.view(n, m, n, m)
    return K4.diagonal(dim1=1, dim2=3).sum(-1), torch.stack([K4[i, :, i, :] for i in range(n)]), \
        K4.diagonal(dim1=1, dim2=3).sum(-1).diagonal()


@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet"])
@pytest.mark.parametrize("method", METHODS)
def test_ntk_gram_equals_JJt(kind, method):
    m, X = make(kind, n=7)
    Jr = reference_jacobian(m, X)
    K = Jr @ Jr.T
    Ktr, Kdiag, Kdiag_tr = _layouts(K, 7, 3)
    for chunk in (None, 3):
        G = ntk_gram(m, X, method=method, chunk_size=chunk)
        assert G.shape == (21, 21)
        _close(G, K)
        assert torch.equal(G, G.T)                         # exactly symmetric (mirrored upper triangle)
        _close(ntk_gram(m, X, method=method, chunk_size=chunk, trace=True), Ktr)
        _close(ntk_gram(m, X, method=method, chunk_size=chunk, diagonal_only=True), Kdiag)
        _close(ntk_gram(m, X, method=method, chunk_size=chunk, diagonal_only=True, trace=True), Kdiag_tr)


@pytest.mark.parametrize("method", ["jacobian_contraction", "ntk_vector_products", "auto"])
def test_ntk_gram_train_mode_batchnorm(method):
    m, X = make("cnn", n=6)
    m.train()
    Jr = reference_jacobian(m, X)
    _close(ntk_gram(m, X, method=method), Jr @ Jr.T)
    with pytest.raises(ValueError, match="structured.*per-sample"):
        ntk_gram(m, X, method="structured")


@pytest.mark.parametrize("method", METHODS)
def test_ntk_cross_block(method):
    m, X = make("resnet", n=7)
    X1, X2 = X[:3], X[3:]
    J1, J2 = reference_jacobian(m, X1), reference_jacobian(m, X2)
    ref = (J1 @ J2.T).view(3, 3, 4, 3).permute(0, 2, 1, 3)
    T = ntk(m, X1, X2, method=method)
    assert T.shape == (3, 4, 3, 3)
    _close(T, ref)
    _close(ntk(m, X1, X2, method=method, trace=True), ref.diagonal(dim1=2, dim2=3).sum(-1))
    Ts = ntk(m, X1, method=method)
    _close(Ts, (J1 @ J1.T).view(3, 3, 3, 3).permute(0, 2, 1, 3))


def test_ntk_refuses_coupled_models():
    m, X = make("cnn", n=4)
    m.train()
    with pytest.raises(ValueError, match="per_sample.*BatchNorm2d"):
        ntk(m, X[:2], X[2:])


def test_structured_rules_positions_shared_weights_groups_and_selection():
    torch.manual_seed(0)

    class Odd(nn.Module):
        """A Linear on (B, T, F) inputs (positions), a Linear called twice, a grouped strided conv, a
        depthwise conv without bias, an embedding-free custom scale parameter (dense rows)."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2)
            self.dw = nn.Conv2d(4, 4, 2, dilation=1, groups=4, bias=False)
            self.seq = nn.Linear(3, 5)
            self.twice = nn.Linear(5, 5)
            self.out = nn.Linear(5, 2)
            self.scale = nn.Parameter(torch.tensor(1.3))

        def forward(self, x):
            h = torch.tanh(self.dw(torch.tanh(self.conv(x))))          # (B, 4, 3, 3)
            h = h.flatten(2).transpose(1, 2)[..., :3]                  # (B, 9, 3)
            h = torch.tanh(self.seq(h)).mean(1)                        # Linear with positions
            h = torch.tanh(self.twice(torch.tanh(self.twice(h))))      # weight sharing across calls
            return self.out(h) * self.scale
    m = Odd().double()
    X = torch.randn(5, 2, 6, 6, dtype=torch.float64)
    J = Jacobian(m, X)
    plan = StructuredPlan(J)
    assert plan.kernel_mods == ["out"]
    assert set(plan.dense_mods) == {"conv", "dw", "seq", "twice"}
    assert plan.rest == ["scale"]
    Jr = reference_jacobian(m, X)
    _close(ntk_gram(m, X, method="structured", chunk_size=2), Jr @ Jr.T)
    # selections: bias only of a kernel-rule layer; weight only of a conv
    for sel in (["out.bias"], ["conv.weight", "out.weight"], ["twice.bias", "scale"]):
        Jr = reference_jacobian(m, X, sel)
        _close(ntk_gram(m, X, sel, method="structured"), Jr @ Jr.T)


def test_structured_ignores_layers_that_fold_the_sample_axis():
    class TimeMajor(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):                    # x (B, T, 3) → (T, B, 3): the Linear sees T first
            return self.lin(x.transpose(0, 1)).sum(0)
    m = TimeMajor().double()
    X = torch.randn(4, 5, 3, dtype=torch.float64)
    plan = StructuredPlan(Jacobian(m, X))
    assert plan.mods == {} and plan.rest == ["lin.weight", "lin.bias"]
    Jr = reference_jacobian(m, X)
    _close(ntk_gram(m, X, method="structured"), Jr @ Jr.T)


def test_frozen_parameters_and_float32():
    m, X = make("mlp", n=6)
    m.net[2].weight.requires_grad_(False)
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    Jr = reference_jacobian(m, X, names)
    for method in METHODS:
        _close(ntk_gram(m, X, method=method), Jr @ Jr.T)
    m32 = copy.deepcopy(m).float()
    for method in METHODS:
        _close(ntk_gram(m32, X.float(), method=method).double(), Jr @ Jr.T, rtol=1e-3, atol=1e-4)


def test_batch_one_out_buffer_and_determinism():
    m, X = make("cnn", n=5)
    Jr = reference_jacobian(m, X[:1])
    _close(ntk_gram(m, X[:1]), Jr @ Jr.T)
    out = torch.from_numpy(np.zeros((15, 15)))
    G = ntk_gram(m, X, out=out, method="structured")
    assert G.data_ptr() == out.data_ptr()
    G1 = ntk_gram(m, X, method="structured")
    assert torch.equal(G1, ntk_gram(m, X, method="structured"))
    for chunk in (1, 2, 4):
        torch.testing.assert_close(ntk_gram(m, X, method="structured", chunk_size=chunk), G1, rtol=1e-12,
                                   atol=1e-13)
    with pytest.raises(ValueError, match="out has shape"):
        ntk_gram(m, X, out=torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="method must be one of"):
        ntk_gram(m, X, method="magic")


def test_small_memory_budget_streams_panels():
    m, X = make("resnet", n=23)
    J = Jacobian(m, X, memory_budget="600KB")
    from gconv.jacobian.ntk import _GramEngine
    eng = _GramEngine(J, "jacobian_contraction")
    assert eng.panel < 23 and eng.chunk < 23                     # several panels, streamed chunks
    Jr = reference_jacobian(m, X)
    for method in ("jacobian_contraction", "ntk_vector_products"):
        _close(ntk_gram(m, X, method=method, memory_budget="600KB"), Jr @ Jr.T)
    _close(ntk_gram(m, X, method="structured", memory_budget="1MB"), Jr @ Jr.T)


def test_gram_blocks_cover_the_upper_triangle():
    m, X = make("mlp", n=7)
    J = Jacobian(m, X, chunk_size=2, memory_budget=2000)
    Jr = reference_jacobian(m, X)
    K = Jr @ Jr.T
    seen = torch.zeros(7, 7, dtype=torch.int64)
    for (r0, r1), (c0, c1), (B,) in gram_blocks(J, "structured"):
        assert r0 <= c0
        seen[r0:r1, c0:c1] += 1
        _close(B, K[r0 * 3:r1 * 3, c0 * 3:c1 * 3])
    assert bool(((seen + seen.T) > 0).all())                    # with its mirror, every entry is covered
    assert int(torch.tril(seen, -1).sum()) <= 7 // 2 * 1         # below the diagonal: only inside diagonal panels


def test_cost_model_prefers_structured_for_wide_mlps_and_reports_why():
    torch.manual_seed(0)
    wide = MLP(d_in=20, widths=(256, 256), m_y=10).double().eval()
    X = torch.randn(16, 20, dtype=torch.float64)
    cm = ntk_cost_model(Jacobian(wide, X))
    assert cm["choice"] == "structured"
    assert cm["costs"]["structured"] < cm["costs"]["jacobian_contraction"]
    m, X = make("cnn", n=4)
    m.train()
    cm = ntk_cost_model(Jacobian(m, X))
    assert cm["costs"]["structured"] is None and "BatchNorm2d" in cm["why"]["structured"]
    assert cm["choice"] in ("jacobian_contraction", "ntk_vector_products")


@pytest.mark.parametrize("method", METHODS)
def test_large_and_small_parameter_tensors_interleaved(method):
    """Weights above the merge threshold for small tensors, biases below it, chunked cross blocks."""
    torch.manual_seed(0)
    m = MLP(d_in=70, widths=(70, 70), m_y=2).double().eval()       # 70·70 = 4900 > 4096 > 70
    X = torch.randn(5, 70, dtype=torch.float64)
    J1, J2 = reference_jacobian(m, X[:2]), reference_jacobian(m, X[2:])
    ref = (J1 @ J2.T).view(2, 2, 3, 2).permute(0, 2, 1, 3)
    _close(ntk(m, X[:2], X[2:], method=method, chunk_size=1), ref)
    Jr = reference_jacobian(m, X)
    _close(ntk_gram(m, X, method=method, chunk_size=2), Jr @ Jr.T)


@pytest.mark.parametrize("method", ["jacobian_contraction", "structured"])
def test_float64_accumulation_of_a_float32_jacobian(method):
    """The Gram of the computed fp32 rows, accumulated in fp64 tile by tile (as the alignment check uses)."""
    from gconv.jacobian.ntk import _gram
    m, X = make("cnn", n=6)
    m32 = copy.deepcopy(m).float()
    J = Jacobian(m32, X.float(), chunk_size=2)
    D = J.dense().double()
    K = _gram(J, None, method=method, trace=False, diagonal_only=False, acc_dtype=torch.float64)
    assert K.dtype == torch.float64 and torch.equal(K, K.T)
    if method == "jacobian_contraction":        # exactly the fp64 Gram of the fp32 rows
        torch.testing.assert_close(K, D @ D.T, rtol=1e-9, atol=1e-12)
    else:                                       # factors (a, g) in fp32, their products in fp64: fp32-level
        torch.testing.assert_close(K, D @ D.T, rtol=1e-5, atol=1e-6)


def test_file_backed_gram_resumes_after_an_interruption(tmp_path, monkeypatch):
    import importlib
    import json
    ntkmod = importlib.import_module("gconv.jacobian.ntk")
    m, X = make("mlp", n=9)
    Jr = reference_jacobian(m, X)
    K = Jr @ Jr.T
    path = str(tmp_path / "K.npy")
    orig = ntkmod._Checkpoint.mark
    seen = []

    def interrupted(self, i0, j0):
        orig(self, i0, j0)
        seen.append((i0, j0))
        if len(seen) == 3:
            self.save()
            raise KeyboardInterrupt
    monkeypatch.setattr(ntkmod._Checkpoint, "mark", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ntk_gram(m, X, out=path, chunk_size=2, method="structured")
    st = json.load(open(path + ".progress.json"))
    assert len(st["done"]) == 3 and not st["complete"]
    computed = []

    def counting(self, i0, j0):
        computed.append((i0, j0))
        orig(self, i0, j0)
    monkeypatch.setattr(ntkmod._Checkpoint, "mark", counting)
    G = ntk_gram(m, X, out=path, chunk_size=2, method="structured", resume=True)
    assert not set(computed) & set(seen) and len(computed) + 3 == 15      # 5 tiles a side: 15 upper tiles
    _close(G, K)
    _close(torch.from_numpy(np.load(path)), K)
    assert json.load(open(path + ".progress.json"))["complete"]
    with pytest.raises(ValueError, match="another computation"):
        ntk_gram(m, X, "net.0", out=path, resume=True)
    with pytest.raises(ValueError, match="expected"):
        ntk_gram(m, X[:5], out=path, resume=True)
    with pytest.raises(ValueError, match="needs out="):
        ntk_gram(m, X, resume=True)
