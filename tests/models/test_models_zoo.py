"""Model zoo: shapes, feature layers (28×28 and 32×32), structure, bad arguments."""
import pytest
import torch
from torch import nn

import gconv.models as M
from gconv.nn import Softplus


def _hooked_features(model, x):
    store = {}
    h = model.get_submodule(model.feature_layer).register_forward_hook(lambda m, a, o: store.setdefault("z", o))
    try:
        out = model(x)
    finally:
        h.remove()
    return store["z"], out


@pytest.mark.parametrize("cin, size, classes", [(1, 28, 10), (3, 32, 10), (3, 32, 100), (2, 9, 3)])
def test_resnet18_shapes_and_feature_layer(cin, size, classes):
    m = M.resnet18(cin, classes, seed=0).eval()
    x = torch.randn(2, cin, size, size)
    out = m(x)
    assert out.shape == (2, classes) and m.feature_dim == 512
    z, out2 = _hooked_features(m, x)
    assert z.shape == (2, 512)
    torch.testing.assert_close(z, m.features(x))
    torch.testing.assert_close(out2, m.head(z))
    one = m(x[:1])   # batch 1 in eval mode
    torch.testing.assert_close(one, out[:1], rtol=1e-4, atol=1e-5)


def test_resnet18_is_preactivation_softplus_everywhere():
    m = M.PreActResNet18(3, 10, zeta=37.0)
    acts = [mod for mod in m.modules() if isinstance(mod, Softplus)]
    assert len(acts) == 2 * 8 + 1 and all(a.zeta == 37.0 for a in acts)
    assert not any(isinstance(mod, (nn.ReLU, nn.ReLU6, nn.LeakyReLU)) for mod in m.modules())
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) == 1 + 16 + 3     # stem, 2 per block, 3 projection shortcuts
    assert sum(isinstance(mod, nn.BatchNorm2d) for mod in m.modules()) == 2 * 8 + 1
    blk = m.trunk.layer2[0]
    assert list(dict(blk.named_children()))[:3] == ["bn1", "act1", "conv1"]   # BN → σ → conv (pre-activation)
    n_params = sum(p.numel() for p in m.parameters())
    assert 11.1e6 < n_params < 11.2e6, n_params
    assert isinstance(m.head, nn.Linear) and m.head.in_features == 512


def test_resnet18_hidden_width_for_two_phase():
    m = M.PreActResNet18(1, 10, hidden_width=110).eval()
    x = torch.randn(3, 1, 28, 28)
    assert m.features(x).shape == (3, 110) and m.feature_dim == 110
    assert isinstance(m.trunk.hidden_act, Softplus) and float(m.features(x).detach().min()) >= 0


def test_resnet18_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="in_channels"):
        M.PreActResNet18(0, 10)
    with pytest.raises(ValueError, match="zeta"):
        M.PreActResNet18(3, 10, zeta=-1.0)
    m = M.PreActResNet18(3, 10)
    with pytest.raises(ValueError, match=r"expects images \(B, 3, H, W\)"):
        m(torch.randn(2, 1, 32, 32))


def test_seeded_construction_is_reproducible_and_leaves_global_rng():
    state = torch.random.get_rng_state()
    a, b = M.LeNet(seed=5), M.LeNet(seed=5)
    assert torch.equal(state, torch.random.get_rng_state())
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    c = M.LeNet(seed=6)
    assert not torch.equal(a.head.weight, c.head.weight)


@pytest.mark.parametrize("size, cin", [(8, 1), (16, 1), (28, 1), (32, 3)])
@pytest.mark.parametrize("width", [1, 2])
def test_lenet_shapes_and_features(size, cin, width):
    m = M.LeNet(cin, 10, size, width=width)
    x = torch.randn(4, cin, size, size)
    assert m(x).shape == (4, 10)
    z, out = _hooked_features(m, x)
    assert z.shape == (4, 128 * width) and m.feature_dim == 128 * width
    torch.testing.assert_close(out, m.head(m.features(x)))
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    lins = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    assert len(convs) == 2 and len(lins) == 3 and all(c.out_channels == 8 * width for c in convs)
    assert not any(isinstance(mod, nn.MaxPool2d) for mod in m.modules())   # average pooling: real analytic


def test_lenet_checks_input_shape():
    with pytest.raises(ValueError, match=r"expects inputs \(B, 1, 28, 28\)"):
        M.LeNet(1, 10, 28)(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="input_size"):
        M.LeNet(1, 10, 2)


def test_mlp_widths_activation_and_features():
    m = M.MLP(1, [300, 300, 300], 1)
    assert [l.out_features for l in m.modules() if isinstance(l, nn.Linear)] == [300, 300, 300, 1]
    assert all(a.zeta == 100.0 for a in m.modules() if isinstance(a, Softplus))
    x = torch.rand(7, 1) * 2 - 1
    assert m(x).shape == (7, 1) and m.features(x).shape == (7, 300) and m.feature_dim == 300
    t = M.MLP(6, [5], 3, activation="tanh")
    img = torch.randn(2, 1, 2, 3)    # flattened to 6 features
    assert t(img).shape == (2, 3) and isinstance(t.trunk.act1, nn.Tanh)
    assert torch.all(t.features(img).abs() <= 1)
    e = M.MLP(4, [], 2)
    assert e.feature_dim == 4 and torch.equal(e.features(torch.ones(1, 4)), torch.ones(1, 4))
    g = M.MLP(3, [4], 2, activation=nn.SiLU)
    assert isinstance(g.trunk.act1, nn.SiLU)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        M.MLP(3, [4], 2, activation="swish")
    with pytest.raises(TypeError, match="not a module instance"):
        M.MLP(3, [4], 2, activation=nn.ReLU())
    with pytest.raises(ValueError, match="widths must be positive"):
        M.MLP(3, [4, 0], 2)


def test_get_model_by_name():
    assert isinstance(M.get_model("resnet18", in_channels=1, num_classes=10), M.PreActResNet18)
    assert isinstance(M.get_model("lenet"), M.LeNet)
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        M.get_model("vgg")


def test_models_work_in_float64_with_gradcheck_on_small_mlp():
    m = M.MLP(3, [4], 2, zeta=5.0).double()
    x = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t), (x,))
