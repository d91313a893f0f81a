"""Losses of the papers, in the form the alignment check and the gradient-basis gap need.

``loss`` may be a string or a torch loss module:

=================================  ===================================  ==========================
accepted                           ℓ(q, y) per sample                   weights λ_i (L = Σ λ_i ℓ_i)
=================================  ===================================  ==========================
"squared" / "mse" / "l2"           ‖q − y‖²  (seed 001)                 1/n
nn.MSELoss(reduction=mean|sum)     ‖q − y‖²                             1/(n·m_y) | 1
"cross_entropy" / "ce"             logsumexp(q) − yᵀq (softmax CE)      1/n
nn.CrossEntropyLoss(mean|sum)      as above                             1/n | 1
"binary_cross_entropy" / "bce"     Σ_k softplus(q_k) − y_k q_k          1/n
nn.BCEWithLogitsLoss(mean|sum)     as above                             1/(n·m_y) | 1
=================================  ===================================  ==========================

Targets: squared loss — (n, m_y) values (or (n,) when m_y = 1); cross-entropy — class indices (n,)
or one-hot / probability rows (n, m_y); binary cross-entropy — (n, m_y) in [0, 1].
The alignment target (seed 000, §2.1.2) is Y_ℓ = Y for the squared loss and 2Y − 1 for the
cross-entropy losses, which needs Y ∈ {0, 1} (one-hot).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

_ALIASES = {"squared": "squared", "mse": "squared", "l2": "squared", "squared_error": "squared",
            "cross_entropy": "cross_entropy", "ce": "cross_entropy", "crossentropy": "cross_entropy",
            "binary_cross_entropy": "binary_cross_entropy", "bce": "binary_cross_entropy",
            "logistic": "binary_cross_entropy"}


@dataclass
class Loss:
    kind: str                 # "squared" | "cross_entropy" | "binary_cross_entropy"
    reduction: str            # "mean_samples" | "mean" | "sum"

    @property
    def target_transform(self) -> str:
        return "Y" if self.kind == "squared" else "2Y-1"

    def weight(self, n: int, m_y: int) -> float:
        if self.reduction == "sum":
            return 1.0
        if self.reduction == "mean" and self.kind in ("squared", "binary_cross_entropy"):
            return 1.0 / (n * m_y)
        return 1.0 / n

    # ---------------------------------------------------------------- targets
    def target_matrix(self, Y: torch.Tensor, n: int, m_y: int, *, for_alignment: bool) -> torch.Tensor:
        """Targets as an (n, m_y) float matrix (one-hot for class indices); validated."""
        if Y is None:
            raise ValueError("the data has no targets; pass (X, Y) or a dataset of (x, y) pairs")
        Y = torch.as_tensor(Y)
        if Y.shape[0] != n:
            raise ValueError(f"targets have {Y.shape[0]} rows for {n} samples")
        if self.kind == "cross_entropy" and not Y.is_floating_point():
            if Y.dim() != 1:
                raise ValueError(f"cross-entropy class-index targets must be (n,), got {tuple(Y.shape)}")
            if int(Y.min()) < 0 or int(Y.max()) >= m_y:
                raise ValueError(f"cross-entropy class indices must lie in [0, {m_y}), got range "
                                 f"[{int(Y.min())}, {int(Y.max())}]")
            return F.one_hot(Y.long(), m_y).to(torch.float64)
        if not Y.is_floating_point():
            Y = Y.to(torch.float64)
        Y = Y.reshape(n, -1)
        if Y.shape[1] != m_y:
            raise ValueError(f"targets have {Y.shape[1]} values per sample, the model has {m_y} outputs")
        from gconv._utils import check_finite
        check_finite(Y, "targets")
        if self.kind != "squared":
            binary = bool(((Y == 0) | (Y == 1)).all())
            if for_alignment and not binary:
                raise ValueError(f"{self.kind} alignment uses Y_ℓ = 2Y − 1, which needs targets in {{0, 1}} "
                                 "(one-hot); got other values")
            if not for_alignment and (bool((Y < 0).any()) or bool((Y > 1).any())):
                raise ValueError(f"{self.kind} targets must lie in [0, 1]")
            if self.kind == "cross_entropy" and not torch.allclose(Y.sum(1), torch.ones(n, dtype=Y.dtype, device=Y.device),
                                                                   atol=1e-6):
                raise ValueError("cross-entropy targets must be class indices or rows summing to 1 (one-hot / "
                                 "probabilities)")
        return Y

    def aligned_target(self, Ymat: torch.Tensor) -> torch.Tensor:
        """Y_ℓ (seed 000, §2.1.2)."""
        return Ymat if self.kind == "squared" else 2 * Ymat - 1

    # ---------------------------------------------------------------- value, gradient, Hessian (per sample rows)
    def value(self, Z: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """ℓ(z_i, y_i) for every sample: (n,)."""
        if self.kind == "squared":
            return ((Z - Y) ** 2).sum(1)
        if self.kind == "cross_entropy":
            return torch.logsumexp(Z, 1) - (Y * Z).sum(1)
        return (F.softplus(Z) - Y * Z).sum(1)

    def grad(self, Z, Y):
        if self.kind == "squared":
            return 2 * (Z - Y)
        if self.kind == "cross_entropy":
            return torch.softmax(Z, 1) - Y
        return torch.sigmoid(Z) - Y

    def hvp(self, Z, V):
        """∇²ℓ(z_i)·v_i for every sample."""
        if self.kind == "squared":
            return 2 * V
        if self.kind == "cross_entropy":
            p = torch.softmax(Z, 1)
            return p * V - p * (p * V).sum(1, keepdim=True)
        s = torch.sigmoid(Z)
        return s * (1 - s) * V


def as_loss(loss) -> Loss:
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        kind = _ALIASES.get(loss.lower().replace("-", "_"))
        if kind is None:
            raise ValueError(f"unknown loss {loss!r}; use 'squared', 'cross_entropy' or 'binary_cross_entropy' "
                             "(or nn.MSELoss / nn.CrossEntropyLoss / nn.BCEWithLogitsLoss)")
        return Loss(kind, "mean_samples")
    if isinstance(loss, nn.Module):
        red = getattr(loss, "reduction", "mean")
        if red not in ("mean", "sum"):
            raise ValueError(f"{type(loss).__name__}(reduction={red!r}) is not supported; use 'mean' or 'sum'")
        if isinstance(loss, nn.MSELoss):
            return Loss("squared", red)
        if isinstance(loss, nn.CrossEntropyLoss):
            if loss.weight is not None or loss.label_smoothing != 0:
                raise ValueError("nn.CrossEntropyLoss with class weights or label smoothing is not supported")
            return Loss("cross_entropy", red)
        if isinstance(loss, nn.BCEWithLogitsLoss):
            if loss.weight is not None or loss.pos_weight is not None:
                raise ValueError("nn.BCEWithLogitsLoss with weight / pos_weight is not supported")
            return Loss("binary_cross_entropy", red)
        raise ValueError(f"unsupported loss module {type(loss).__name__}; use nn.MSELoss, nn.CrossEntropyLoss or "
                         "nn.BCEWithLogitsLoss")
    raise TypeError(f"loss must be a string or a torch loss module, got {type(loss).__name__}")
