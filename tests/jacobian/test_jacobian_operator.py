"""gconv.jacobian.Jacobian against float64 dense torch.func.jacrev; products, selection, coupling, errors."""
import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gconv.jacobian import Jacobian, select_parameters
from gconv.jacobian._functional import TransformError

from _jacobian_models import MLP, make, reference_jacobian, reference_jacobian_autograd

RTOL, ATOL = 1e-5, 1e-8


def _close(a, b, rtol=RTOL, atol=ATOL):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("kind,mode", [("mlp", "eval"), ("cnn", "eval"), ("cnn", "train"), ("resnet", "eval"),
                                       ("resnet", "train")])
def test_dense_and_products_match_jacrev(kind, mode):
    m, X = make(kind, n=5)
    getattr(m, mode)()
    Jref = reference_jacobian(m, X)
    J = Jacobian(m, X, chunk_size=2)
    assert J.shape == Jref.shape == (5 * 3, sum(p.numel() for p in m.parameters()))
    assert J.coupling == ("full_batch" if mode == "train" else "per_sample")
    _close(J.dense(), Jref)
    g = torch.Generator().manual_seed(1)
    v = torch.randn(J.d, generator=g, dtype=torch.float64)
    u = torch.randn(J.shape[0], generator=g, dtype=torch.float64)
    V = torch.randn(J.d, 4, generator=g, dtype=torch.float64)
    U = torch.randn(J.shape[0], 3, generator=g, dtype=torch.float64)
    _close(J.mv(v), Jref @ v)
    _close(J.rmv(u), Jref.T @ u)
    _close(J.rmv(u.reshape(5, 3)), Jref.T @ u)
    _close(J.mm(V), Jref @ V)
    _close(J.rmm(U), Jref.T @ U)
    _close(J @ v, Jref @ v)
    _close(J.T @ u, Jref.T @ u)


def test_train_mode_batchnorm_is_full_batch_and_has_no_side_effects():
    m, X = make("cnn", n=6)
    m.train()
    state = copy.deepcopy(m.state_dict())
    J = Jacobian(m, X)
    D = J.dense()
    J.mv(torch.randn(J.d, dtype=torch.float64))
    J.rmm(torch.randn(J.shape[0], 2, dtype=torch.float64))
    for k, v in m.state_dict().items():       # running statistics untouched
        assert torch.equal(v, state[k]), k
    _close(D, reference_jacobian_autograd(m, X))
    # the full-batch Jacobian differs from the per-sample (eval) one
    m.eval()
    assert (Jacobian(m, X).dense() - D).abs().max() > 1e-3


@pytest.mark.parametrize("chunk", [1, 2, 4, 7])
def test_adjoint_identity(chunk):
    m, X = make("cnn", n=7)
    J = Jacobian(m, X, chunk_size=chunk)
    g = torch.Generator().manual_seed(chunk)
    for _ in range(3):
        v = torch.randn(J.d, generator=g, dtype=torch.float64)
        u = torch.randn(J.shape[0], generator=g, dtype=torch.float64)
        lhs, rhs = float(J.mv(v) @ u), float(v @ J.rmv(u))
        assert abs(lhs - rhs) <= 1e-12 * (abs(lhs) + 1)


def test_float32_operator_matches_float64_reference():
    m, X = make("resnet", n=4)
    ref = reference_jacobian(m, X)
    m32 = copy.deepcopy(m).float()
    J = Jacobian(m32, X.float())
    assert J.dtype == torch.float32
    _close(J.dense().double(), ref, rtol=2e-3, atol=2e-4)
    v = torch.randn(J.d)
    _close(J.mv(v).double(), ref @ v.double(), rtol=2e-3, atol=2e-4)


def test_determinism_across_runs_and_chunk_sizes():
    m, X = make("resnet", n=7)
    v = torch.randn(sum(p.numel() for p in m.parameters()), dtype=torch.float64)
    u = torch.randn(21, dtype=torch.float64)
    outs = {}
    for chunk in (1, 3, 7):
        J = Jacobian(m, X, chunk_size=chunk)
        a, b = J.mv(v), J.rmv(u)
        assert torch.equal(a, J.mv(v)) and torch.equal(b, J.rmv(u))     # bitwise across runs
        outs[chunk] = (a, b, J.dense())
    for chunk in (3, 7):
        for x, y in zip(outs[chunk], outs[1]):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-13)


def test_batch_one_odd_sizes_and_noncontiguous_inputs():
    torch.manual_seed(0)
    m = MLP(d_in=5, widths=(3,), m_y=1).double().eval()
    Xt = torch.randn(5, 9, dtype=torch.float64)
    X = Xt.T                                    # (9, 5), non-contiguous
    assert not X.is_contiguous()
    J = Jacobian(m, X, chunk_size=4)
    _close(J.dense(), reference_jacobian(m, X.contiguous()))
    J1 = Jacobian(m, X[:1])
    assert J1.shape == (1, J.d)
    _close(J1.dense(), reference_jacobian(m, X[:1].contiguous()))


def test_frozen_parameters_are_excluded_and_can_be_selected():
    m, X = make("mlp", n=4)
    m.net[0].weight.requires_grad_(False)
    J = Jacobian(m, X)
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    assert J.param_names == names
    _close(J.dense(), reference_jacobian(m, X, names))
    J2 = Jacobian(m, X, params="net.0.weight")          # explicitly named: selected although frozen
    _close(J2.dense(), reference_jacobian(m, X, ["net.0.weight"]))


def test_parameter_selection_forms():
    from gconv.nn import EEHead
    torch.manual_seed(0)

    class WithHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 5)
            self.head = EEHead(5, 3, 2)

        def forward(self, x):
            return self.head(torch.tanh(self.body(x)))
    m = WithHead().double()
    X = torch.randn(3, 4, dtype=torch.float64)
    assert select_parameters(m, None) == ["body.weight", "body.bias", "head.weight", "head.output_weight"]
    assert select_parameters(m, "ee_head") == ["head.weight"]
    assert select_parameters(m, m.head.weight) == ["head.weight"]
    assert select_parameters(m, "body") == ["body.weight", "body.bias"]
    assert select_parameters(m, m.body) == ["body.weight", "body.bias"]
    assert select_parameters(m, ["head.output_weight", m.body.bias, "head.output_weight"]) == \
        ["head.output_weight", "body.bias"]
    J = Jacobian(m, X, params="last")
    assert J.param_names == ["head.weight", "head.output_weight"]
    Jw = Jacobian(m, X, params=m.head.weight)      # θ_(H−1) of the EE head
    _close(Jw.dense(), reference_jacobian(m, X, ["head.weight"]))
    with pytest.raises(ValueError, match="neither a parameter nor a module"):
        select_parameters(m, "nope")
    with pytest.raises(ValueError, match="not a parameter of the model"):
        select_parameters(m, nn.Parameter(torch.zeros(2)))
    with pytest.raises(ValueError, match="empty selection"):
        select_parameters(m, [])


def test_data_sources_and_param_values():
    m, X = make("mlp", n=6)
    Y = torch.randn(6, 3, dtype=torch.float64)
    ref = reference_jacobian(m, X)
    for data in (X, (X, Y), TensorDataset(X, Y), DataLoader(TensorDataset(X, Y), batch_size=4),
                 X.numpy()):
        _close(Jacobian(m, data, chunk_size=4).dense(), ref)
    # evaluation at other parameter values (a state_dict)
    m2 = copy.deepcopy(m)
    with torch.no_grad():
        for p in m2.parameters():
            p.add_(0.3)
    J = Jacobian(m, X, param_values=m2.state_dict())
    _close(J.dense(), reference_jacobian(m2, X))
    # float32 data are cast to the model's dtype
    _close(Jacobian(m, X.float()).dense(), reference_jacobian(m, X.float().double()))


def test_live_parameters_and_outputs():
    m, X = make("mlp", n=4)
    J = Jacobian(m, X)
    _close(J.outputs(), m(X).detach())
    with torch.no_grad():
        m.net[0].weight.mul_(2)
    _close(J.dense(), reference_jacobian(m, X))       # reads current values


def test_row_blocks_and_scipy():
    from scipy.sparse.linalg import lsqr as scipy_lsqr
    m, X = make("cnn", n=5)
    J = Jacobian(m, X)
    ref = reference_jacobian(m, X)
    rb = J.row_blocks(chunk_size=2)
    blocks = list(rb)
    assert len(rb) == 3 and [b.shape[0] for b in blocks] == [6, 6, 3]
    assert all(b.shape[1] == J.d for b in blocks)
    _close(torch.cat(blocks), ref)
    assert len(list(rb)) == 3                       # re-iterable
    A = J.to_scipy()
    v = np.random.default_rng(0).standard_normal(J.d)
    np.testing.assert_allclose(A.matvec(v), (ref @ torch.from_numpy(v)).numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(A.rmatvec(np.ones(J.shape[0])), ref.T.sum(1).numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(A.matmat(np.eye(J.d)[:, :3]), ref[:, :3].numpy(), rtol=1e-10, atol=1e-12)
    x = scipy_lsqr(A, (ref @ torch.ones(J.d, dtype=torch.float64)).numpy(), atol=1e-12, btol=1e-12)[0]
    assert np.linalg.norm(A.matvec(x) - (ref @ torch.ones(J.d, dtype=torch.float64)).numpy()) < 1e-6


def test_memory_budget_sets_chunks_and_refuses_too_small():
    m, X = make("resnet", n=8)
    J = Jacobian(m, X, memory_budget="1MB")
    assert 1 <= J.chunk_rows < 8 and J.chunk_jv >= J.chunk_rows
    _close(J.dense(), reference_jacobian(m, X))
    # a budget between what the products need per sample and what one sample's dense rows need (both
    # measured on this build: fused activations save less, so no fixed number fits every build)
    prod, rows = max(J.tm.bytes_per_sample("jv"), J.tm.bytes_per_sample("vjp")), J.tm.bytes_per_sample("rows")
    assert prod < rows
    J = Jacobian(m, X, memory_budget=int((prod + rows) / 2))      # products fit, dense rows do not
    v = torch.randn(J.d, dtype=torch.float64)
    _close(J.mv(v), reference_jacobian(m, X) @ v)
    with pytest.raises(MemoryError, match="dense Jacobian rows.*memory budget"):
        list(J.row_blocks())
    with pytest.raises(MemoryError, match="memory budget"):
        Jacobian(m, X, memory_budget=1000)
    m.train()
    with pytest.raises(MemoryError, match="full-batch evaluation.*BatchNorm"):
        Jacobian(m, X, memory_budget="20KB")


# ---------------------------------------------------------------- bad input
def test_bad_vectors():
    m, X = make("mlp", n=4)
    J = Jacobian(m, X)
    with pytest.raises(ValueError, match="shape"):
        J.mv(torch.zeros(J.d + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        J.rmv(torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        J.mv(torch.full((J.d,), float("nan"), dtype=torch.float64))
    with pytest.raises(TypeError, match="floating"):
        J.mv(torch.zeros(J.d, dtype=torch.int64))
    with pytest.raises(ValueError, match="2-D"):
        J.mm(torch.zeros(J.d, dtype=torch.float64))


def test_bad_data():
    m, X = make("mlp", n=4)
    with pytest.raises(ValueError, match="empty"):
        Jacobian(m, X[:0])
    with pytest.raises(ValueError, match="same number of samples"):
        Jacobian(m, (X, torch.zeros(3, 3)))
    with pytest.raises(TransformError, match="forward pass failed in module 'net.0' \\(Linear\\)"):
        Jacobian(m, torch.zeros(4, 6, dtype=torch.float64))      # wrong feature size


def test_parameters_that_do_not_affect_the_output():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 2)
            self.spare = nn.Linear(3, 2)

        def forward(self, x):
            return self.a(x)
    m = Unused().double()
    X = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"do not affect the model output.*spare.weight"):
        Jacobian(m, X)
    assert Jacobian(m, X, params="a").d == 8


def test_dropout_and_coupled_modules_are_refused_by_name():
    m = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).double()
    X = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="module '1' \\(Dropout"):
        Jacobian(m, X)
    m.eval()
    Jacobian(m, X)
    cm, CX = make("cnn", n=4)
    cm.train()
    with pytest.raises(ValueError, match="per_sample.*module 'b1' \\(BatchNorm2d\\)"):
        Jacobian(cm, CX, coupling="per_sample")

    class CenterBatch(nn.Module):          # couples samples without being a known module type
        def forward(self, x):
            return x - x.mean(0, keepdim=True)
    m2 = nn.Sequential(nn.Linear(3, 4), CenterBatch(), nn.Linear(4, 2)).double()
    with pytest.raises(ValueError, match="not per-sample functions"):
        Jacobian(m2, X)
    J = Jacobian(m2, X, coupling="full_batch")
    _close(J.dense(), reference_jacobian(m2, X))


class _ExpNoJvp(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return x.exp()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (o,) = ctx.saved_tensors
        return g * o


class _ExpOldStyle(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.exp()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x.exp()


class _Wrap(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn.apply(x)


def test_module_without_forward_mode_ad():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), _Wrap(_ExpNoJvp), nn.Linear(4, 2)).double()
    X = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(TransformError, match="forward-mode AD.*module '1' \\(_Wrap\\)"):
        Jacobian(m, X, forward_ad="forward")
    with pytest.warns(RuntimeWarning) as rec:
        J = Jacobian(m, X)
    msgs = [str(w.message) for w in rec]
    assert any("forward-mode AD" in s and "module '1' (_Wrap)" in s and "reverse mode" in s for s in msgs)
    assert any("vmap" in s and "module '1' (_Wrap)" in s and "loop" in s for s in msgs)
    assert J.jv_mode == "reverse"
    ref = reference_jacobian_autograd(m, X)
    v = torch.randn(J.d, dtype=torch.float64)
    _close(J.mv(v), ref @ v)
    _close(J.mm(torch.eye(J.d, dtype=torch.float64)[:, :5]), ref[:, :5])
    _close(J.dense(), ref)          # the Function has no vmap rule either: rows by a per-sample loop
    # an old-style Function cannot be transformed at all: a clear error naming the module
    m2 = nn.Sequential(nn.Linear(3, 4), _Wrap(_ExpOldStyle), nn.Linear(4, 2)).double()
    with pytest.raises(TransformError, match="module '1' \\(_Wrap\\)"):
        Jacobian(m2, X)


def test_model_output_checks():
    class TupleOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(2, 2)

        def forward(self, x):
            return self.l(x), x
    with pytest.raises(TransformError, match="one tensor"):
        Jacobian(TupleOut().double(), torch.randn(3, 2, dtype=torch.float64))

    class NaNOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(2, 2)

        def forward(self, x):
            return self.l(x) * float("nan")
    with pytest.raises(ValueError, match="NaN"):
        Jacobian(NaNOut().double(), torch.randn(3, 2, dtype=torch.float64))


def test_vector_output_and_multidim_output():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)).double()   # (B,) outputs → m_y = 1
    X = torch.randn(4, 3, dtype=torch.float64)
    J = Jacobian(m, X)
    assert J.m_y == 1
    _close(J.dense(), reference_jacobian(m, X))
    m2 = nn.Sequential(nn.Linear(3, 6), nn.Unflatten(1, (2, 3))).double()
    J2 = Jacobian(m2, X)
    assert J2.m_y == 6
    _close(J2.dense(), reference_jacobian(m2, X))
