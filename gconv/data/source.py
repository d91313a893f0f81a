"""One fixed-order view of every data source gconv accepts.

Everything that walks a data set (Jacobian operators, NTK Grams, feature extraction, verifiers)
takes ``data`` as any of:

* a tensor ``X`` (inputs only) or a tuple/list ``(X, Y)`` of tensors / numpy arrays;
* a map-style ``torch.utils.data.Dataset`` returning ``x`` or ``(x, y)`` (read in index order);
* a ``torch.utils.data.DataLoader`` that does **not** shuffle (a shuffling loader would make
  "row i" mean a different sample on each pass, so it is refused);
* a :class:`DataSource` (returned as is).

and walks it through :func:`as_data_source`, so "row i" means the same sample everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler


@dataclass
class Batch:
    start: int                  # index of the first sample of this batch in the data source
    x: torch.Tensor
    y: torch.Tensor | None


class DataSource:
    """A fixed-order, re-iterable data source with a known length ``n``."""

    def __init__(self, n: int, batch_fn, *, has_targets: bool, name: str = "data"):
        if n <= 0:
            raise ValueError(f"{name} is empty (n = 0)")
        self.n, self._batch_fn, self.has_targets, self.name = int(n), batch_fn, has_targets, name

    def __len__(self):
        return self.n

    def batches(self, batch_size: int, *, start: int = 0, stop: int | None = None) -> Iterator[Batch]:
        """Yield consecutive batches covering samples ``start .. stop-1`` in order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        stop = self.n if stop is None else min(stop, self.n)
        for s in range(start, stop, batch_size):
            e = min(s + batch_size, stop)
            x, y = self._batch_fn(s, e)
            yield Batch(s, x, y)

    def slice(self, start: int, stop: int) -> Batch:
        """Samples ``start .. stop-1`` as one batch."""
        x, y = self._batch_fn(start, min(stop, self.n))
        return Batch(start, x, y)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The whole data set as (X, Y) tensors (Y None without targets). Materialises it."""
        b = self.slice(0, self.n)
        return b.x, b.y


def _as_tensor(a, what):
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    raise TypeError(f"{what} must be a torch.Tensor or numpy array, got {type(a).__name__}")


def as_data_source(data, *, name: str = "data") -> DataSource:
    """Wrap ``data`` (see module docstring) as a :class:`DataSource`."""
    if isinstance(data, DataSource):
        return data
    if isinstance(data, (torch.Tensor, np.ndarray)):
        X = _as_tensor(data, name)
        if X.dim() == 0:
            raise ValueError(f"{name} must have a leading sample dimension, got a scalar")
        return DataSource(X.shape[0], lambda s, e: (X[s:e], None), has_targets=False, name=name)
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise ValueError(f"{name} as a tuple must be (X, Y), got {len(data)} elements")
        X, Y = _as_tensor(data[0], f"{name}[0] (inputs)"), _as_tensor(data[1], f"{name}[1] (targets)")
        if X.dim() == 0 or Y.dim() == 0 or X.shape[0] != Y.shape[0]:
            raise ValueError(f"{name}: inputs and targets must have the same number of samples, "
                             f"got X {tuple(X.shape)} and Y {tuple(Y.shape)}")
        return DataSource(X.shape[0], lambda s, e: (X[s:e], Y[s:e]), has_targets=True, name=name)
    if isinstance(data, DataLoader):
        if not isinstance(data.sampler, SequentialSampler) and data.batch_sampler is not None \
                and not isinstance(getattr(data.batch_sampler, "sampler", None), SequentialSampler):
            raise ValueError(f"{name}: the DataLoader shuffles or uses a custom sampler; gconv needs a fixed "
                             "sample order (use shuffle=False)")
        return as_data_source(data.dataset, name=name)
    if isinstance(data, Dataset):
        try:
            n = len(data)
        except TypeError as exc:
            raise TypeError(f"{name}: an iterable-style dataset has no length; pass a map-style Dataset, "
                            "tensors or a DataLoader over one") from exc
        if n == 0:
            raise ValueError(f"{name} is empty (n = 0)")
        first = data[0]
        has_y = isinstance(first, (tuple, list)) and len(first) >= 2

        def fetch(s, e):
            items = [data[i] for i in range(s, e)]
            if has_y:
                xs = torch.stack([_as_tensor(it[0], name) for it in items])
                ys = torch.stack([torch.as_tensor(it[1]) for it in items])
                return xs, ys
            return torch.stack([_as_tensor(it if not isinstance(it, (tuple, list)) else it[0], name)
                                for it in items]), None
        return DataSource(n, fetch, has_targets=has_y, name=name)
    raise TypeError(f"{name}: unsupported data type {type(data).__name__}; pass tensors, (X, Y), a Dataset "
                    "or a non-shuffling DataLoader")
