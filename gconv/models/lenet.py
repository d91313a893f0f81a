"""LeNet (five layers: two convolutions, three fully connected), as in seed 000 §2.2."""
from __future__ import annotations

import math
from collections import OrderedDict

from torch import nn

from gconv.models._base import FeatureModel, make_activation, seeded


class LeNet(FeatureModel):
    """conv5×5(8·m_c) → σ → avgpool2 → conv5×5(8·m_c) → σ → avgpool2 → fc(128·m_c) → σ → fc(128·m_c) → σ → head.

    Seed 000 §2.2: "the number of convolutional filters per convolutional layer is 8 × m_c and the
    number of neurons per fully connected hidden layer is 128 × m_c" (``width = m_c``), softplus
    ζ = 100. Convolutions are zero-padded ("same") and pooling is average pooling (real analytic,
    as the papers' assumptions need), so 8×8 (sklearn digits), 16×16 (Semeion), 28×28 and 32×32
    inputs all work. ``features(x)``: output of the second fully connected layer (128·m_c).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size=28, *, width: int = 1,
                 activation="softplus", zeta: float = 100.0, seed: int | None = None):
        super().__init__()
        hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if len(hw) != 2 or min(hw) < 4:
            raise ValueError(f"LeNet: input_size must be an int or (H, W) with H, W >= 4, got {input_size!r}")
        for name, v in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"LeNet: {name} must be a positive int, got {v!r}")
        if not (zeta > 0 and math.isfinite(zeta)):
            raise ValueError(f"LeNet: zeta must be a positive finite number, got {zeta!r}")
        self.in_channels, self.input_size, self.width, self.zeta = in_channels, hw, width, float(zeta)
        c, f = 8 * width, 128 * width
        flat = c * (hw[0] // 2 // 2) * (hw[1] // 2 // 2)
        with seeded(seed):
            self.trunk = nn.Sequential(OrderedDict(
                conv1=nn.Conv2d(in_channels, c, 5, padding=2), act1=make_activation(activation, zeta),
                pool1=nn.AvgPool2d(2),
                conv2=nn.Conv2d(c, c, 5, padding=2), act2=make_activation(activation, zeta),
                pool2=nn.AvgPool2d(2),
                flatten=nn.Flatten(),
                fc1=nn.Linear(flat, f), act3=make_activation(activation, zeta),
                fc2=nn.Linear(f, f), act4=make_activation(activation, zeta)))
            self.head = nn.Linear(f, num_classes)

    def _check(self, x):
        if x.dim() != 4 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != self.input_size:
            raise ValueError(f"LeNet expects inputs (B, {self.in_channels}, {self.input_size[0]}, "
                             f"{self.input_size[1]}), got {tuple(x.shape)}")

    def forward(self, x):
        self._check(x)
        return self.head(self.trunk(x))

    def features(self, x):
        self._check(x)
        return self.trunk(x)
