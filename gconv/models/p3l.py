"""P-3L: the partially-trained three-layer network of seed 004 (Chen, Vanden-Eijnden & Bruna).

    φ_j(x) = σ(z_jᵀ x / √d),   z_j ~ N(0, I_d) fixed,          j = 1..D   (random embedding)
    h_i(x) = s_D · Σ_j W_ij φ_j(x),  W_ij ~ N(0, 1) trained,    i = 1..m   (eq. 5)
    f(x)   = s_m · Σ_i c_i σ(h_i(x)),  c_i = ±ĉ Rademacher fixed             (eq. 4)

Scalings (seed 004 §2.1 and Experiment 3, Table 1):

    ==========  ======  ======  ==========================================================
    scaling      s_m     s_D     learning-rate factor (``lr_scale``) for an O(1) change of f
    ==========  ======  ======  ==========================================================
    "paper"      1/m     1/√D    m        (eq. 9: W ← W − δ·m·∂L/∂W)
    "mf"         1/m     1/D     m·D      (mean-field scaling for multi-layer nets)
    "ntk"        1/√m    1/√D    1        (lazy regime; symmetrised at initialisation)
    ==========  ======  ======  ==========================================================

The paper writes the NTK variant as "1/√m instead of 1/m in (4)" and the MF variant as "1/D instead
of 1/√D in (5)". The ``lr_scale`` column is derived (not quoted): it is the factor that makes one
gradient step of size δ·lr_scale change f by O(δ) under each scaling. With
``symmetrize=True`` (the default for "ntk", as the paper does after Chizat et al.), neurons come in
pairs (W_{i+m/2} = W_i, c_{i+m/2} = −c_i), so f ≡ 0 at initialisation.

The convergence condition (Theorem 3, Assumption 4) is λ_min(G) > 0 for the embedding Gram
G_ab = (1/D) Σ_j φ_j(x_a) φ_j(x_b)  (:meth:`P3L.gram`).
``embedding="identity"`` gives the shallow mean-field network of §3.1.1 (φ_j(x) = x_j, D = d).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from gconv.models._base import FeatureModel, make_activation, seeded

SCALINGS = {"paper": ("1/m", "1/sqrt(D)"), "mf": ("1/m", "1/D"), "ntk": ("1/sqrt(m)", "1/sqrt(D)")}


class RandomEmbedding(nn.Module):
    """φ(x) = σ(x zᵀ / √d) with a fixed buffer z ∈ R^{D×d} (identity embedding: z is None, φ(x) = x)."""

    def __init__(self, d: int, D: int | None, activation, zeta: float, generator: torch.Generator | None):
        super().__init__()
        self.d = d
        if D is None:
            self.register_buffer("z", None)
            self.act = None
            self.D = d
        else:
            self.register_buffer("z", torch.randn(D, d, generator=generator))
            self.act = make_activation(activation, zeta)
            self.D = D

    def forward(self, x):
        x = x.flatten(1)
        if x.shape[1] != self.d:
            raise ValueError(f"P3L expects inputs with d = {self.d} features, got {tuple(x.shape)}")
        if self.z is None:
            return x
        return self.act(x @ self.z.to(x.dtype).t() / math.sqrt(self.d))


class ScaledLinear(nn.Module):
    """h = s · φ Wᵀ without bias (seed 004 neglects bias terms)."""

    def __init__(self, D: int, m: int, scale: float, generator: torch.Generator | None):
        super().__init__()
        self.in_features, self.out_features, self.scale = D, m, float(scale)
        self.weight = nn.Parameter(torch.randn(m, D, generator=generator))

    def forward(self, phi):
        return self.scale * (phi @ self.weight.t())

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale:.3g}"


class FixedReadout(nn.Module):
    """f = s · σ(h) c with a fixed (buffer) Rademacher c — the untrained last layer of P-3L."""

    def __init__(self, m: int, scale: float, c: torch.Tensor):
        super().__init__()
        self.in_features, self.out_features, self.scale = m, 1, float(scale)
        self.register_buffer("c", c)

    def forward(self, a):
        return self.scale * (a @ self.c.to(a.dtype)).unsqueeze(1)

    def extra_repr(self):
        return f"in_features={self.in_features}, scale={self.scale:.3g} (fixed)"


class P3L(FeatureModel):
    """Partially-trained three-layer network (seed 004, eqs. 4–5); only ``W`` is a parameter.

    ``d`` input dimension, ``m`` width of the trained layer, ``D`` width of the random embedding
    (default ``m``, as in Experiment 3). ``features(x)`` = σ(h(x)) ∈ R^m; :meth:`embedding` = Φ(x).
    """

    def __init__(self, d: int, m: int, D: int | None = None, *, scaling: str = "paper", activation="tanh",
                 zeta: float = 100.0, c_hat: float = 1.0, embedding: str = "random",
                 symmetrize: bool | None = None, seed: int | None = None):
        super().__init__()
        for name, v in (("d", d), ("m", m)) + ((("D", D),) if D is not None else ()):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"P3L: {name} must be a positive int, got {v!r}")
        if scaling not in SCALINGS:
            raise ValueError(f"P3L: scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
        if embedding not in ("random", "identity"):
            raise ValueError(f"P3L: embedding must be 'random' or 'identity', got {embedding!r}")
        if embedding == "identity" and D is not None and D != d:
            raise ValueError(f"P3L: the identity embedding has D = d = {d}, got D = {D}")
        if not (c_hat > 0 and math.isfinite(c_hat)):
            raise ValueError(f"P3L: c_hat must be positive, got {c_hat!r}")
        symmetrize = (scaling == "ntk") if symmetrize is None else bool(symmetrize)
        if symmetrize and m % 2:
            raise ValueError(f"P3L: symmetrize needs an even width m, got {m}")
        D_eff = d if embedding == "identity" else (m if D is None else D)
        self.d, self.m, self.D, self.scaling, self.c_hat = d, m, D_eff, scaling, float(c_hat)
        self.symmetrized = symmetrize
        s_m = 1.0 / m if scaling in ("paper", "mf") else 1.0 / math.sqrt(m)
        s_D = 1.0 / D_eff if scaling == "mf" else 1.0 / math.sqrt(D_eff)
        with seeded(seed):
            g = None
            embed = RandomEmbedding(d, None if embedding == "identity" else D_eff, activation, zeta, g)
            hidden = ScaledLinear(D_eff, m, s_D, g)
            c = c_hat * (torch.randint(0, 2, (m,)) * 2 - 1).float()
            if symmetrize:
                half = m // 2
                with torch.no_grad():
                    hidden.weight[half:] = hidden.weight[:half]
                c[half:] = -c[:half]
            self.trunk = nn.Sequential()
            self.trunk.add_module("embed", embed)
            self.trunk.add_module("hidden", hidden)
            self.trunk.add_module("act", make_activation(activation, zeta))
            self.head = FixedReadout(m, s_m, c)

    @property
    def W(self) -> nn.Parameter:
        """The trained second-to-last layer weight W ∈ R^{m×D}."""
        return self.trunk.hidden.weight

    @property
    def c(self) -> torch.Tensor:
        return self.head.c

    @property
    def z(self) -> torch.Tensor | None:
        return self.trunk.embed.z

    @property
    def lr_scale(self) -> float:
        """Multiply a step size δ by this for seed 004's GD (eq. 9 for "paper"; see module docstring)."""
        return {"paper": float(self.m), "mf": float(self.m * self.D), "ntk": 1.0}[self.scaling]

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """Φ(x) ∈ R^{B×D} (φ_j(x) = σ(z_jᵀx/√d), or x itself for the identity embedding)."""
        return self.trunk.embed(x)

    @torch.no_grad()
    def gram(self, x: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
        """G = Φ(x) Φ(x2)ᵀ / D (seed 004's Gram matrix of the embedding; λ_min(G) > 0 is Theorem 3's
        condition). Computed in the dtype of ``x`` — pass float64 for a rank / eigenvalue check."""
        p1 = self.embedding(x)
        p2 = p1 if x2 is None else self.embedding(x2)
        return p1 @ p2.t() / self.D

    def extra_repr(self):
        return f"d={self.d}, D={self.D}, m={self.m}, scaling={self.scaling!r}, symmetrized={self.symmetrized}"
