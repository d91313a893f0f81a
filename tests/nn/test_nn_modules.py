"""gconv.nn: Softplus, EEHead (gate switch, state_dict, optimizers) and convert_activations."""
import copy
import io

import pytest
import torch
from torch import nn

from gconv import ops
from gconv.nn import EEHead, Softplus, convert_activations


# ---------------------------------------------------------------- Softplus
def test_softplus_module_matches_op_and_validates_zeta():
    m = Softplus(50.0)
    x = torch.randn(4, 7, dtype=torch.float64)
    assert torch.equal(m(x), ops.softplus(x, 50.0))
    assert "zeta=50" in repr(m)
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="zeta"):
            Softplus(bad)


# ---------------------------------------------------------------- EEHead
def make_head(**kw):
    return EEHead(11, 3, 7, gate_zeta=kw.pop("gate_zeta", 0.9), dtype=torch.float64, **kw)


def test_eehead_shapes_init_and_reference():
    head = make_head()
    assert head.weight.shape == (3, 7, 12) and head.output_weight.shape == (3, 7)
    assert head.gate_weight is None and not head.gate_frozen
    assert [n for n, _ in head.named_parameters()] == ["weight", "output_weight"]
    z = torch.randn(5, 11, dtype=torch.float64)
    out = head(z)
    assert out.shape == (5, 3)
    assert torch.allclose(out, ops.ee_head_reference(z, head.weight, head.output_weight, None, 0.9),
                          rtol=1e-12, atol=1e-14)
    std = head.weight.detach().std().item()
    assert 0.6 * (2 / 12) ** 0.5 < std < 1.4 * (2 / 12) ** 0.5            # He initialisation
    assert head.output_weight.abs().max().item() <= 1 / 7 ** 0.5


def test_eehead_rejects_bad_construction_and_input():
    for bad in ({"in_features": 0}, {"out_features": 2.0}, {"width": True}):
        args = {"in_features": 4, "out_features": 2, "width": 3, **bad}
        with pytest.raises(ValueError, match="positive int"):
            EEHead(**args)
    with pytest.raises(ValueError, match="gate_zeta"):
        EEHead(4, 2, 3, gate_zeta=-1.0)
    head = make_head()
    with pytest.raises(ValueError, match=r"expected input of shape \(batch, 11\)"):
        head(torch.randn(5, 10, dtype=torch.float64))
    with pytest.raises(ValueError, match="z must be 2-D"):
        head(torch.randn(5, 2, 11, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point"):
        head(torch.ones(5, 11, dtype=torch.int64))


def test_freeze_gate_keeps_the_output_and_is_idempotent():
    head = make_head()
    z = torch.randn(6, 11, dtype=torch.float64)
    before = head(z)
    assert head.freeze_gate() is head and head.gate_frozen
    r = head.gate_weight
    assert not r.requires_grad and torch.equal(r, head.weight.detach())
    assert r.data_ptr() != head.weight.data_ptr()
    assert torch.allclose(head(z), before, rtol=1e-14, atol=0)
    head.freeze_gate()
    assert head.gate_weight is r                                          # idempotent
    assert "gate_frozen=True" in repr(head)


def test_frozen_gate_is_untouched_by_optimizer_steps_and_gets_no_grad():
    head = make_head()
    head.freeze_gate()
    r0 = head.gate_weight.clone()
    head.output_weight.requires_grad_(False)                              # exploitation: θ_(H−1) only
    opt = torch.optim.SGD(head.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2)
    z = torch.randn(8, 11, dtype=torch.float64)
    w0 = head.weight.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        head(z).square().sum().backward()
        opt.step()
    assert head.gate_weight.grad is None and torch.equal(head.gate_weight, r0)
    assert head.output_weight.grad is None
    assert not torch.equal(head.weight, w0)
    opt = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=0.1)
    head(z).sum().backward()
    opt.step()
    assert torch.equal(head.gate_weight, r0)


def test_after_the_switch_the_output_is_linear_in_weight():
    head = make_head()
    head.freeze_gate()
    z = torch.randn(4, 11, dtype=torch.float64)
    w = head.weight.detach().clone()
    d = torch.randn_like(w)
    f = lambda ww: ops.ee_head(z, ww, head.output_weight.detach(), head.gate_weight, 0.9)  # noqa: E731
    assert torch.allclose(f(w + 2 * d), 2 * f(w + d) - f(w), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("frozen", [False, True])
def test_state_dict_round_trip_both_states(frozen):
    src = make_head()
    with torch.no_grad():
        src.weight.add_(0.1)
    if frozen:
        src.freeze_gate()
        with torch.no_grad():
            src.weight.add_(0.2)                                          # W moves, R stays
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf)
    assert ("gate_weight" in sd) == frozen
    z = torch.randn(5, 11, dtype=torch.float64)
    for start_frozen in (False, True):                                    # load into either state
        dst = make_head()
        if start_frozen:
            dst.freeze_gate()
        dst.load_state_dict(sd)
        assert dst.gate_frozen == frozen
        assert torch.equal(dst(z), src(z))
        if frozen:
            assert torch.equal(dst.gate_weight, src.gate_weight)


def test_module_conversions_and_copies():
    head = make_head()
    head.freeze_gate()
    h32 = copy.deepcopy(head).float()
    assert h32.gate_weight.dtype == torch.float32 and h32.weight.dtype == torch.float32
    z = torch.randn(3, 11)
    assert torch.allclose(h32(z).double(), head(z.double()), rtol=1e-4, atol=1e-5)


def test_eehead_in_a_model_compiles_fullgraph():
    model = nn.Sequential(nn.Linear(6, 11), Softplus(100.0), EEHead(11, 2, 5)).double()
    x = torch.randn(9, 6, dtype=torch.float64)
    cm = torch.compile(model, fullgraph=True)
    loss = cm(x).square().sum()
    loss.backward()
    g = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss2 = model(x).square().sum()
    loss2.backward()
    assert torch.allclose(loss, loss2, rtol=1e-12)
    for a, p in zip(g, model.parameters()):
        assert torch.allclose(a, p.grad, rtol=1e-10, atol=1e-12)
    model[2].freeze_gate()
    assert torch.allclose(cm(x), model(x), rtol=1e-12)                    # recompiles for the frozen state


# ---------------------------------------------------------------- convert_activations
class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.act = nn.LeakyReLU(0.1)
        self.blocks = nn.ModuleList([nn.ReLU(), nn.Sequential(nn.Linear(3, 3), nn.ReLU6())])
        self.table = nn.ModuleDict({"p": nn.PReLU(), "r": nn.RReLU(), "s": nn.Softplus(beta=2.0)})
        self.gelu = nn.GELU()

    def forward(self, x):
        return torch.relu(self.act(x))                                   # functional call stays


def test_convert_activations_replaces_the_relu_family_everywhere():
    m = Custom()
    out = convert_activations(m, zeta=50.0)
    assert out is m
    acts = [mod for mod in m.modules() if isinstance(mod, Softplus)]
    assert len(acts) == 6 and all(a.zeta == 50.0 for a in acts)
    assert not any(isinstance(mod, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.Softplus))
                   for mod in m.modules())
    assert isinstance(m.gelu, nn.GELU)                                    # not in the family
    assert not any("weight" in n and "table" in n for n, _ in m.named_parameters())   # PReLU slope gone


def test_convert_activations_options():
    m = Custom()
    convert_activations(m, classes=nn.ReLU)
    assert isinstance(m.blocks[0], Softplus) and isinstance(m.act, nn.LeakyReLU)
    m = Custom()
    convert_activations(m, classes=(nn.GELU, nn.LeakyReLU))
    assert isinstance(m.gelu, Softplus) and isinstance(m.act, Softplus) and isinstance(m.blocks[0], nn.ReLU)
    shared = nn.ReLU()
    seq = nn.Sequential(nn.Linear(2, 2), shared, nn.Linear(2, 2), shared)
    convert_activations(seq)
    assert seq[1] is seq[3] and isinstance(seq[1], Softplus)              # shared stays shared
    top = convert_activations(nn.ReLU(), zeta=7.0)
    assert isinstance(top, Softplus) and top.zeta == 7.0
    with pytest.raises(TypeError, match="nn.Module subclasses"):
        convert_activations(Custom(), classes=(int,))
    with pytest.raises(TypeError, match="must be an nn.Module"):
        convert_activations(lambda x: x)
    with pytest.raises(ValueError, match="zeta"):
        convert_activations(Custom(), zeta=0.0)


def test_converted_model_approximates_relu():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    x = torch.randn(32, 4, dtype=torch.float64)
    y_relu = model(x)
    convert_activations(model, zeta=1e4)
    assert torch.allclose(model(x), y_relu, atol=1e-3)
