"""Fully connected networks: ``MLP(in_features, widths, out_features, activation="softplus")``."""
from __future__ import annotations

import math
from collections import OrderedDict

from torch import nn

from gconv.models._base import FeatureModel, make_activation, seeded


class MLP(FeatureModel):
    """x (flattened) → [Linear(·, w_k) → σ] for w_k in ``widths`` → head Linear(w_last, out_features).

    Seed 000 §2.2's network is ``MLP(1, [300, 300, 300], 1)`` (four layers, softplus ζ = 100).
    ``features(x)`` is the output of the last hidden activation (width ``widths[-1]``; the flattened
    input when ``widths`` is empty). Trunk modules are named ``fc{k}`` / ``act{k}``.
    """

    def __init__(self, in_features: int, widths, out_features: int, *, activation="softplus",
                 zeta: float = 100.0, bias: bool = True, seed: int | None = None):
        super().__init__()
        widths = [int(w) for w in widths]
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"MLP: {name} must be a positive int, got {v!r}")
        if any(w < 1 for w in widths):
            raise ValueError(f"MLP: widths must be positive, got {widths}")
        if not (zeta > 0 and math.isfinite(zeta)):
            raise ValueError(f"MLP: zeta must be a positive finite number, got {zeta!r}")
        self.in_features, self.widths, self.zeta = in_features, widths, float(zeta)
        with seeded(seed):
            layers = OrderedDict(flatten=nn.Flatten())
            prev = in_features
            for k, w in enumerate(widths, start=1):
                layers[f"fc{k}"] = nn.Linear(prev, w, bias=bias)
                layers[f"act{k}"] = make_activation(activation, zeta)
                prev = w
            self.trunk = nn.Sequential(layers)
            self.head = nn.Linear(prev, out_features, bias=bias)
