"""EE model modification (seed 000 §3.2.2): which layers become the EE head, and m_H."""
import math

import pytest
import torch
from torch import nn

import gconv.models as M
from gconv.nn import EEHead
from gconv.train import add_ee_head


def test_fully_connected_last_two_layers_are_merged_as_in_the_sine_experiment():
    m = M.MLP(1, [300, 300, 300], 1)
    info = add_ee_head(m, seed=0)
    assert info["kind"] == "merged_last_two"
    assert info["replaced"] == ["trunk.fc3", "trunk.act3", "head"]
    assert (info["in_features"], info["m_H"], info["m_H_minus_1"], info["out_features"]) == (300, 300, 301, 1)
    assert isinstance(m.head, EEHead) and m.head.weight.shape == (1, 300, 301)
    assert list(dict(m.trunk.named_children())) == ["flatten", "fc1", "act1", "fc2", "act2"]
    x = torch.rand(5, 1)
    assert m(x).shape == (5, 1) and m.features(x).shape == (5, 300) and m.feature_dim == 300
    torch.testing.assert_close(m(x), m.head(m.features(x)))


@pytest.mark.parametrize("n, m_H", [(60000, 234), (50000, 195), (73257, 286), (1000, 4)])
def test_resnet18_gets_a_head_on_its_512_features_with_table2_width(n, m_H):
    """Seed 000 Table 2: m_{H−1} = 513 (512 + constant neuron), m_H = ⌈2n/m_{H−1}⌉."""
    m = M.PreActResNet18(1, 10)
    info = add_ee_head(m, n=n)
    assert info["kind"] == "replaced_output" and info["m_H"] == m_H == math.ceil(2 * n / 513)
    assert info["m_H_minus_1"] == 513 and isinstance(m.head, EEHead) and m.head.width == m_H
    if n == 1000:
        m.eval()
        x = torch.randn(2, 1, 28, 28)
        assert m(x).shape == (2, 10) and m.features(x).shape == (2, 512)


def test_lenet_and_hidden_width_resnet_merge():
    le = M.LeNet(1, 10, 8)
    assert add_ee_head(le)["m_H"] == 128 and le.feature_dim == 128   # z̄ = output of fc1 (128)
    assert le(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    r = M.PreActResNet18(1, 10, hidden_width=50)
    info = add_ee_head(r)
    assert info["kind"] == "merged_last_two" and info["m_H"] == 50 and info["in_features"] == 512


def test_plain_sequential_and_custom_forward_models(small_cnn):
    seq = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.Tanh(), nn.Dropout(0.0), nn.Linear(7, 2))
    info = add_ee_head(seq)
    assert info["kind"] == "merged_last_two" and info["m_H"] == 7 and info["replaced"] == ["1", "2", "3", "4"]
    assert isinstance(seq[-1], EEHead) and len(seq) == 2 and seq(torch.randn(3, 12)).shape == (3, 2)
    with pytest.raises(ValueError, match=r"needs n \(the number of training samples\)"):
        add_ee_head(small_cnn)
    info = add_ee_head(small_cnn, n=100)
    assert info["kind"] == "replaced_output" and info["name"] == "fc" and info["m_H"] == math.ceil(200 / 17)
    assert small_cnn(torch.randn(2, 1, 6, 6)).shape == (2, 3)


def test_merge_false_width_and_existing_head():
    m = M.MLP(2, [8, 8], 3)
    info = add_ee_head(m, merge=False, n=90)
    assert info["kind"] == "replaced_output" and info["m_H"] == 20 and info["in_features"] == 8
    again = add_ee_head(m)
    assert again["kind"] == "existing_ee_head" and again["replaced"] == []
    m2 = M.MLP(2, [8, 8], 3)
    assert add_ee_head(m2, width=5)["m_H"] == 5
    with pytest.raises(ValueError, match="merge=True"):
        add_ee_head(nn.Sequential(nn.Linear(3, 2)), merge=True)


def test_head_matches_replaced_layer_device_dtype_and_seed():
    a, b = M.MLP(2, [6, 6], 2).double(), M.MLP(2, [6, 6], 2).double()
    add_ee_head(a, seed=4)
    add_ee_head(b, seed=4)
    assert a.head.weight.dtype == torch.float64
    assert torch.equal(a.head.weight, b.head.weight) and torch.equal(a.head.output_weight, b.head.output_weight)


def test_unusable_last_layers_are_named():
    with pytest.raises(ValueError, match="no usable last layer"):
        add_ee_head(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()))
    with pytest.raises(ValueError, match="model.head is a FixedReadout"):
        add_ee_head(M.P3L(3, 4))
    with pytest.raises(ValueError, match="output_layer 'nope' is not a module"):
        add_ee_head(M.MLP(2, [3], 2), output_layer="nope")
    with pytest.raises(ValueError, match="is a Softplus"):
        add_ee_head(M.MLP(2, [3], 2), output_layer="trunk.act1")


def test_too_narrow_head_warns_about_assumption4():
    with pytest.warns(RuntimeWarning, match="Assumption 4"):
        add_ee_head(M.MLP(2, [3], 2), merge=False, width=2, n=100)
