"""The shape every model in :mod:`gconv.models` shares: ``trunk`` → ``head``.

* ``model.trunk``: x ↦ the last hidden representation (flat, (B, feature_dim)); its module name
  ``model.feature_layer == "trunk"`` is what a forward hook needs to capture features.
* ``model.head``: the output layer (an ``nn.Linear``; an :class:`~gconv.nn.EEHead` once the EE
  wrapper has modified the model; a fixed read-out for P-3L).
* ``model.features(x)`` = ``model.trunk(x)``, ``model.feature_dim`` = its width.

So z̄ (seed 000: the input of the EE head) and h_X (seed 003: the last hidden layer) come from any
zoo model the same way, before and after :class:`gconv.train.EEWrapper` modifies it.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from gconv.nn import Softplus

ACTIVATIONS: dict[str, Callable[[float], nn.Module]] = {
    "softplus": lambda zeta: Softplus(zeta),
    "relu": lambda zeta: nn.ReLU(),
    "tanh": lambda zeta: nn.Tanh(),
    "sigmoid": lambda zeta: nn.Sigmoid(),
    "gelu": lambda zeta: nn.GELU(),
    "identity": lambda zeta: nn.Identity(),
}


def make_activation(activation, zeta: float = 100.0) -> nn.Module:
    """A fresh activation module from a name (``softplus`` (ζ), ``relu``, ``tanh``, ``sigmoid``,
    ``gelu``, ``identity``), an ``nn.Module`` class, or a zero-argument factory."""
    if isinstance(activation, str):
        key = activation.lower()
        if key not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(ACTIVATIONS)} "
                             "or pass an nn.Module class / factory")
        return ACTIVATIONS[key](zeta)
    if isinstance(activation, nn.Module):
        raise TypeError("pass the activation as a name, an nn.Module class or a factory, not a module "
                        "instance (each layer needs its own module)")
    if callable(activation):
        mod = activation()
        if not isinstance(mod, nn.Module):
            raise TypeError(f"activation factory returned {type(mod).__name__}, not an nn.Module")
        return mod
    raise TypeError(f"activation must be a name, an nn.Module class or a factory, got {activation!r}")


@contextlib.contextmanager
def seeded(seed: int | None):
    """Run the block under ``torch.manual_seed(seed)`` without disturbing the global RNG (no-op for None)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


class FeatureModel(nn.Module):
    """Base class: ``forward(x) = head(trunk(x))``, ``features(x) = trunk(x)``."""

    feature_layer = "trunk"

    def forward(self, x):
        return self.head(self.trunk(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden representation (B, feature_dim): the input of ``head``."""
        return self.trunk(x)

    @property
    def feature_dim(self) -> int:
        for attr in ("in_features",):
            if hasattr(self.head, attr):
                return int(getattr(self.head, attr))
        raise AttributeError(f"{type(self).__name__}.head has no in_features")

    @property
    def out_features(self) -> int:
        return int(self.head.out_features)
