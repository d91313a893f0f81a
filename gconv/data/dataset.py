"""An in-memory data set with metadata that is itself a :class:`~gconv.data.DataSource`.

Every loader in :mod:`gconv.data` returns a :class:`Data`: pass it anywhere gconv takes ``data``
(``as_data_source(d) is d``), unpack its tensors with ``X, Y = d.tensors()``, or hand it to a
training loop with ``d.loader(batch_size, shuffle=True)``.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from gconv._utils import check_finite
from gconv.data.source import DataSource


def _to_tensor(a, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        if a.dtype == object:
            raise TypeError(f"{what} is a numpy object array; expected numbers")
        return torch.from_numpy(np.ascontiguousarray(a))
    raise TypeError(f"{what} must be a torch.Tensor or numpy array, got {type(a).__name__}")


class Data(DataSource):
    """Inputs ``X`` (n, ...), optional targets ``Y`` (n, ...) and a ``meta`` dict.

    ``meta`` always has ``name``, ``source`` (where the data came from), ``n``, ``input_shape``
    (per sample), ``task`` (``"classification"``, ``"binary"``, ``"regression"`` or ``"unlabeled"``)
    and, for classification, ``num_classes``; loaders add their own keys (seed, path, ...).
    """

    def __init__(self, X, Y=None, *, name: str = "data", meta: dict | None = None, validate: bool = True):
        X = _to_tensor(X, f"{name}: inputs")
        if X.dim() == 0:
            raise ValueError(f"{name}: inputs need a leading sample dimension, got a scalar")
        if Y is not None:
            Y = _to_tensor(Y, f"{name}: targets")
            if Y.dim() == 0 or Y.shape[0] != X.shape[0]:
                raise ValueError(f"{name}: inputs and targets must have the same number of samples, got "
                                 f"X {tuple(X.shape)} and Y {tuple(Y.shape)}")
        if X.shape[0] == 0:
            raise ValueError(f"{name} is empty (n = 0)")
        if validate:   # generators that construct finite values themselves skip this pass
            check_finite(X, f"{name}: inputs")
            if Y is not None:
                check_finite(Y, f"{name}: targets")
        self.X, self.Y = X, Y
        super().__init__(X.shape[0], self._fetch, has_targets=Y is not None, name=name)
        m = dict(meta or {})
        m.setdefault("task", "unlabeled" if Y is None else "regression")
        m.update(name=name, n=int(X.shape[0]), input_shape=list(X.shape[1:]),
                 dtype=str(X.dtype).replace("torch.", ""))
        m.setdefault("source", "tensors")
        self.meta = m

    def _fetch(self, s, e):
        return self.X[s:e], (None if self.Y is None else self.Y[s:e])

    # --- views -----------------------------------------------------------------------------------
    def tensors(self):
        """(X, Y) without copying (Y is None for unlabeled data)."""
        return self.X, self.Y

    @property
    def num_classes(self) -> int | None:
        return self.meta.get("num_classes")

    def subset(self, indices, *, name: str | None = None) -> "Data":
        """The samples at ``indices`` (a slice, index tensor / array / list), in that order."""
        if isinstance(indices, slice):
            X, Y = self.X[indices], None if self.Y is None else self.Y[indices]
        else:
            idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
            if idx.dim() != 1:
                raise ValueError(f"{self.name}.subset: indices must be one-dimensional, got shape {tuple(idx.shape)}")
            if idx.numel() and (int(idx.min()) < -self.n or int(idx.max()) >= self.n):
                raise IndexError(f"{self.name}.subset: index out of range for n = {self.n}")
            X, Y = self.X[idx], None if self.Y is None else self.Y[idx]
        meta = copy.deepcopy(self.meta)
        meta["subset_of"] = self.name
        return Data(X, Y, name=name or self.name, meta=meta)

    def head(self, n: int) -> "Data":
        """The first ``n`` samples (``n`` must not exceed the size)."""
        check_n(n, self.n, self.name)
        return self if n == self.n else self.subset(slice(0, n))

    def split(self, train: float | int, *, shuffle: bool = True, seed: int = 0) -> tuple["Data", "Data"]:
        """(train, test): ``train`` is a fraction in (0, 1) or a sample count in [1, n−1].

        With ``shuffle`` the samples are assigned by a permutation drawn from ``seed``; otherwise the
        first samples form the training part.
        """
        if isinstance(train, float) and not isinstance(train, bool) and 0 < train < 1:
            k = int(round(train * self.n))
        elif isinstance(train, int) and not isinstance(train, bool):
            k = train
        else:
            raise ValueError(f"{self.name}.split: train must be a fraction in (0, 1) or a count, got {train!r}")
        if not 1 <= k <= self.n - 1:
            raise ValueError(f"{self.name}.split: the training part must hold 1..{self.n - 1} samples, got {k}")
        if shuffle:
            g = torch.Generator().manual_seed(int(seed))
            perm = torch.randperm(self.n, generator=g)
        else:
            perm = torch.arange(self.n)
        return (self.subset(perm[:k], name=f"{self.name}[train]"), self.subset(perm[k:], name=f"{self.name}[test]"))

    def to(self, *, dtype: torch.dtype | None = None, device=None) -> "Data":
        """A copy with floating-point inputs (and float targets) cast to ``dtype`` / moved to ``device``."""
        X = self.X.to(device=device, dtype=dtype if (dtype is not None and self.X.is_floating_point()) else None)
        Y = None
        if self.Y is not None:
            Y = self.Y.to(device=device, dtype=dtype if (dtype is not None and self.Y.is_floating_point()) else None)
        return Data(X, Y, name=self.name, meta=copy.deepcopy(self.meta))

    def dataset(self) -> TensorDataset:
        """A ``torch.utils.data.TensorDataset`` over the same tensors."""
        return TensorDataset(self.X) if self.Y is None else TensorDataset(self.X, self.Y)

    def loader(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, **kw) -> DataLoader:
        """A DataLoader; with ``shuffle`` the order comes from a generator seeded by ``seed``."""
        g = torch.Generator().manual_seed(int(seed)) if shuffle else None
        return DataLoader(self.dataset(), batch_size=batch_size, shuffle=shuffle, generator=g, **kw)

    def summary(self) -> dict:
        return dict(self.meta)

    def __repr__(self):
        y = "None" if self.Y is None else f"{tuple(self.Y.shape)} {str(self.Y.dtype).replace('torch.', '')}"
        return (f"Data(name={self.name!r}, n={self.n}, X={tuple(self.X.shape)} "
                f"{str(self.X.dtype).replace('torch.', '')}, Y={y}, task={self.meta.get('task')!r})")


def check_n(n, available: int | None, what: str) -> int | None:
    """Validate a requested sample count ``n`` (None = all)."""
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{what}: n must be a positive integer, got {n!r}")
    if available is not None and n > available:
        raise ValueError(f"{what}: n = {n} exceeds the {available} samples available")
    return int(n)


def format_targets(labels: torch.Tensor, num_classes: int, targets: str, what: str) -> torch.Tensor:
    """Integer class labels (n,) → ``"index"`` (n,) int64, ``"onehot"`` (n, C) float32, or
    ``"float"`` ((n, 1) in {0, 1} for two classes, one-hot otherwise)."""
    labels = labels.long()
    if targets == "index":
        return labels
    if targets == "onehot" or (targets == "float" and num_classes > 2):
        return torch.nn.functional.one_hot(labels, num_classes).float()
    if targets == "float":
        return labels.float().unsqueeze(1)
    raise ValueError(f"{what}: targets must be 'index', 'onehot' or 'float', got {targets!r}")
