"""Realistic, ill-conditioned test and benchmark inputs for gconv.linalg (no downloads).

Real digits (``sklearn.datasets.load_digits``: 1,797 8×8 images shipped with scikit-learn),
upsampled to 28×28 and augmented by one-pixel shifts and small noise when more samples are needed,
go through a small randomly initialised conv net with softplus(ζ = 100) everywhere (He init, eval
mode, float64).  Its 512 pooled features + a constant neuron give Z (n × 513 = m_{H−1});
S = sigmoid(Z q), q ~ N(0, 1), gives the safe-exploration matrix φ = S ⊙ Z of seed 000 (Assumption 4,
m_H = ⌈2n/513⌉); ActivatedFeatures(Z̄, W, b) with width ⌈1.1 n⌉ the expressivity matrix [h_X, 1_n]
of seeds 002/003 (Assumption 1).  As the design notes (§3) report for ResNet-18 features, these are far
worse conditioned than i.i.d. Gaussian matrices.  Needs scikit-learn.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def softplus100(t):
    """softplus with ζ = 100 in its stable form max(t, 0) + log1p(exp(−|ζt|))/ζ (design notes §2.1)."""
    return torch.clamp_min(t, 0) + torch.log1p(torch.exp(-(100.0 * t).abs())) / 100.0


class SmallSoftplusNet(nn.Module):
    """conv(1→16, 3×3) → conv(16→32, s2) → conv(32→32, s2) → avg-pool 4×4 → 512 features; softplus(100)
    after every conv; He-initialised, zero biases, float64, eval mode."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        for mod in (self.c1, self.c2, self.c3):
            fan_in = mod.weight[0].numel()
            with torch.no_grad():
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                mod.bias.zero_()
        self.double().eval()

    def forward(self, x):
        for conv in (self.c1, self.c2, self.c3):
            x = softplus100(conv(x))
        return F.adaptive_avg_pool2d(x, 4).flatten(1)


@functools.lru_cache(maxsize=None)
def digit_images(n: int, seed: int = 0) -> torch.Tensor:
    """n real digit images, 1×28×28 float64 in [0, 1] (augmented by shifts + noise beyond 1,797)."""
    from sklearn.datasets import load_digits
    X = torch.from_numpy(load_digits().images / 16.0).to(torch.float64)[:, None]     # 1797 × 1 × 8 × 8
    X = F.interpolate(X, size=(28, 28), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(seed)
    out = [X]
    k = 0
    while sum(t.shape[0] for t in out) < n:
        k += 1
        dx, dy = (k % 3) - 1, ((k // 3) % 3) - 1
        Y = torch.roll(X, shifts=(dy, dx), dims=(2, 3))
        out.append((Y + 0.02 * torch.randn(Y.shape, generator=g)).clamp(0, 1))
    return torch.cat(out)[:n].contiguous()


@functools.lru_cache(maxsize=None)
def digit_features(n: int, seed: int = 0) -> np.ndarray:
    """Z = [features, 1] (n × 513) of n digit images through a random softplus(100) conv net."""
    net = SmallSoftplusNet(seed)
    with torch.no_grad():
        f = torch.cat([net(b) for b in digit_images(n, seed).split(512)])
    return np.hstack([f.numpy(), np.ones((n, 1))])


def safe_exploration_factors(n: int, seed: int = 0):
    """(S, Z) of the safe-exploration matrix φ = S ⊙ Z with m_{H−1} = 513, m_H = ⌈2n / 513⌉ (seed 000)."""
    Z = digit_features(n, seed)
    mH = math.ceil(2 * n / Z.shape[1])
    q = np.random.default_rng(seed + 1).standard_normal((Z.shape[1], mH))
    S = 1.0 / (1.0 + np.exp(-(Z @ q)))
    return S, Z


def expressivity_factors(n: int, seed: int = 0):
    """(Z̄, W, b) with width ⌈1.1 n⌉, He-initialised W, zero b (seeds 002/003)."""
    Z = digit_features(n, seed)[:, :-1]
    m = Z.shape[1]
    width = math.ceil(1.1 * n)
    rng = np.random.default_rng(seed + 2)
    W = rng.standard_normal((m, width)) * math.sqrt(2.0 / m)
    b = np.zeros(width)
    return Z, W, b


