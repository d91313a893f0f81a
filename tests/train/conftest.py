import functools

import pytest
import torch
from torch import nn

import gconv.data as D
import gconv.models as M


@pytest.fixture
def sgd():
    return functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-5)


@pytest.fixture
def moons():
    return D.load_builtin("two_moons", n=24, seed=0)


class SmallCNN(nn.Module):
    """Conv → BN → softplus → pool → Linear: the last two layers are *not* fully connected."""

    def __init__(self, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = M.make_activation("softplus", 10.0)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.bn(self.conv(x)))).flatten(1))


@pytest.fixture
def small_cnn():
    torch.manual_seed(3)
    return SmallCNN()


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    return D.from_tensors(torch.randn(18, 1, 6, 6, generator=g), torch.randint(0, 3, (18,), generator=g))
