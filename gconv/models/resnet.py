"""Pre-activation ResNet-18 with softplus(ζ) everywhere (seeds 000 §3.4.2 and 002/003 §7)."""
from __future__ import annotations

import math
from collections import OrderedDict

from torch import nn

from gconv.models._base import FeatureModel, seeded
from gconv.nn import Softplus


class PreActBlock(nn.Module):
    """BN → σ → conv3×3(stride) → BN → σ → conv3×3, plus the identity (or a 1×1 projection of the
    pre-activated input when the shape changes) — He et al., "Identity mappings in deep residual
    networks" (2016)."""

    def __init__(self, in_planes: int, planes: int, stride: int, zeta: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.act1 = Softplus(zeta)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = Softplus(zeta)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
                         if stride != 1 or in_planes != planes else None)

    def forward(self, x):
        out = self.act1(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.act2(self.bn2(out)))
        return out + skip


class PreActResNet18(FeatureModel):
    """Pre-activation ResNet-18, softplus(ζ) in every block (ζ = 100 in the papers).

    Stem conv3×3(64) (stride 1, the CIFAR / MNIST variant), four stages of two
    :class:`PreActBlock` (64, 128, 256, 512 channels × ``width / 64``; strides 1, 2, 2, 2), then
    BN → σ → global average pooling → flatten: ``features(x)`` ∈ R^512 (seed 000's z̄; with the
    constant neuron m_{H−1} = 513, Table 2). Works for any input size ≥ 8 (28×28 MNIST-like,
    32×32 CIFAR-like) and any number of input channels.

    ``hidden_width``: seeds 002/003 §7 add a fully connected last hidden layer of ⌈1.1 n⌉ softplus
    units; with it, ``features(x)`` is that layer's output (h_X^{(H)}).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, *, zeta: float = 100.0, width: int = 64,
                 hidden_width: int | None = None, seed: int | None = None):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"PreActResNet18: {name} must be a positive int, got {v!r}")
        if hidden_width is not None and (not isinstance(hidden_width, int) or hidden_width < 1):
            raise ValueError(f"PreActResNet18: hidden_width must be a positive int or None, got {hidden_width!r}")
        if not (zeta > 0 and math.isfinite(zeta)):
            raise ValueError(f"PreActResNet18: zeta must be a positive finite number, got {zeta!r}")
        self.in_channels, self.zeta = in_channels, float(zeta)
        planes = [width, 2 * width, 4 * width, 8 * width]
        with seeded(seed):
            layers = OrderedDict(conv1=nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False))
            prev = width
            for i, (p, s) in enumerate(zip(planes, (1, 2, 2, 2)), start=1):
                layers[f"layer{i}"] = nn.Sequential(PreActBlock(prev, p, s, zeta), PreActBlock(p, p, 1, zeta))
                prev = p
            layers["bn"] = nn.BatchNorm2d(prev)
            layers["act"] = Softplus(zeta)
            layers["pool"] = nn.AdaptiveAvgPool2d(1)
            layers["flatten"] = nn.Flatten()
            if hidden_width is not None:
                layers["hidden"] = nn.Linear(prev, hidden_width)
                layers["hidden_act"] = Softplus(zeta)
                prev = hidden_width
            self.trunk = nn.Sequential(layers)
            self.head = nn.Linear(prev, num_classes)

    def forward(self, x):
        self._check(x)
        return self.head(self.trunk(x))

    def features(self, x):
        self._check(x)
        return self.trunk(x)

    def _check(self, x):
        if x.dim() != 4 or x.shape[1] != self.in_channels or min(x.shape[2:]) < 8:
            raise ValueError(f"PreActResNet18 expects images (B, {self.in_channels}, H, W) with H, W >= 8, "
                             f"got {tuple(x.shape)}")


def resnet18(in_channels: int = 3, num_classes: int = 10, **kw) -> PreActResNet18:
    """Shorthand for :class:`PreActResNet18`."""
    return PreActResNet18(in_channels, num_classes, **kw)
