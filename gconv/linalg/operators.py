"""Adapters: scipy ``LinearOperator`` / objects with ``mv``/``rmv`` (or ``matvec``/``rmatvec``) as
implicit matrices, and the transpose of an implicit matrix."""
from __future__ import annotations

import numpy as np
import torch

from gconv.linalg.implicit import ImplicitMatrix, _like, _np64


class OperatorMatrix(ImplicitMatrix):
    """A matrix known only through A·x and Aᵀ·y.  Rows are obtained as Aᵀ·E (E a block of unit
    vectors), so row access costs one adjoint product per row; no |A| products (no rigorous
    residual bounds)."""

    kind = "operator"

    def __init__(self, op, name="A"):
        self.op, self.name = op, name
        shape = tuple(int(s) for s in op.shape)
        if len(shape) != 2:
            raise ValueError(f"{name}: operator shape must be 2-D, got {shape}")
        self.shape = shape
        self.block_rows = 64
        dt = getattr(op, "dtype", None)
        self.source_dtype = str(dt).replace("torch.", "") if dt is not None else "float64"
        self._device = getattr(op, "device", None)
        # torch in/out when the operator declares a torch dtype / device; numpy for scipy operators;
        # otherwise found out on the first call
        from scipy.sparse.linalg import LinearOperator
        if isinstance(dt, torch.dtype) or isinstance(self._device, torch.device):
            self._torch_io = True
        elif isinstance(op, LinearOperator):
            self._torch_io = False
        else:
            self._torch_io = None

    def _call(self, fn_names, v):
        for nm in fn_names:
            fn = getattr(self.op, nm, None)
            if fn is not None:
                break
        else:
            raise TypeError(f"{self.name}: the operator has none of {fn_names}")
        if self._torch_io is None:
            try:
                r = fn(v)
                self._torch_io = False
                return _np64(r, self.name)
            except Exception:  # noqa: BLE001 — the operator rejected numpy input: try torch tensors
                self._torch_io = True
        if self._torch_io:
            t = torch.from_numpy(np.ascontiguousarray(v))
            tdt = getattr(self.op, "dtype", None)
            if isinstance(tdt, torch.dtype):
                t = t.to(tdt)
            if self._device is not None:
                t = t.to(self._device)
            return _np64(fn(t), self.name)
        return _np64(fn(v), self.name)

    def _mv(self, x):
        if x.ndim == 2:
            return np.stack([self._mv(x[:, j]) for j in range(x.shape[1])], axis=1)
        return self._call(("matvec", "mv", "_matvec"), x).reshape(self.n)

    def _rmv(self, y):
        if y.ndim == 2:
            return np.stack([self._rmv(y[:, j]) for j in range(y.shape[1])], axis=1)
        return self._call(("rmatvec", "rmv", "_rmatvec"), y).reshape(self.D)

    def rows(self, start, stop):
        out = np.empty((stop - start, self.D))
        e = np.zeros(self.n)
        for i in range(start, stop):
            e[i] = 1.0
            out[i - start] = self._rmv(e)
            e[i] = 0.0
        return out

    def _abs_mv(self, x):
        raise NotImplementedError("a general operator gives no |A| products")

    _abs_rmv = _abs_mv


class Transposed(ImplicitMatrix):
    """Mᵀ for an implicit matrix M (rows of Mᵀ are columns of M)."""

    kind = "transposed"

    def __init__(self, M: ImplicitMatrix):
        self.M = M
        self.shape = (M.shape[1], M.shape[0])
        self.source_dtype = M.source_dtype
        self.block_rows = max(1, min(1024, (64 << 20) // (8 * max(M.shape[0], 1))))

    @property
    def T(self):
        return self.M

    def rows(self, start, stop):
        return np.ascontiguousarray(self.M.column_block(start, stop).T)

    def column_block(self, c0, c1):
        return np.ascontiguousarray(self.M.rows(c0, c1).T)

    def _mv(self, x):
        return self.M._rmv(x)

    def _rmv(self, y):
        return self.M._mv(y)

    def _abs_mv(self, x):
        return self.M._abs_rmv(x)

    def _abs_rmv(self, y):
        return self.M._abs_mv(y)

    @property
    def entry_error(self):
        return self.M.entry_error


def as_operator(A, name="A"):
    """An :class:`OperatorMatrix` for LinearOperator-like objects, else None."""
    if not hasattr(A, "shape"):
        return None
    has_fwd = any(hasattr(A, nm) for nm in ("matvec", "mv"))
    has_adj = any(hasattr(A, nm) for nm in ("rmatvec", "rmv"))
    if has_fwd and has_adj:
        return OperatorMatrix(A, name)
    return None


__all__ = ["OperatorMatrix", "Transposed", "as_operator", "_like"]
