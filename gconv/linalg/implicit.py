"""Implicit matrices: known through their rows, products and structure, never materialised whole.

=====================================  ====================================================
``KhatriRao(S, Z)``                    row i = s_i ⊗ z_i  (n × m_H·m_{H−1}); seed 000 φ(q, θ)
``ActivatedFeatures(Z, W, b, act)``    row i = [act(z_i W + b), 1]; seeds 002/003 [h_X, 1_n]
``RowBlocks(blocks_or_callable, ...)`` an iterable / callable yielding row blocks
``DenseMatrix(A)``                     a torch tensor or numpy array seen through the same interface
=====================================  ====================================================

Every implicit matrix has ``.shape``, ``.dtype`` (the working precision, float64), ``.source_dtype``,
``rows(start, stop)`` (float64 numpy), ``row_blocks(block_rows)``, ``matvec`` / ``rmatvec`` (numpy
or torch in, same kind out), ``abs_matvec`` / ``abs_rmatvec`` (upper bounds on |A|·x and |A|ᵀ·y for
x, y ≥ 0 — for rigorous residual bounds), ``to_dense()`` and ``to_scipy()``.

"The matrix" a certificate speaks about: for ``KhatriRao`` the exact real products s_ik·z_il of the
stored factors; for ``ActivatedFeatures`` the float64 features as gconv evaluates them (row blocks are
evaluated in fixed blocks and checked bit for bit on every re-evaluation); for dense inputs and
``RowBlocks`` the stored (or yielded) numbers, upcast exactly to float64.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, Iterator

import numpy as np
import torch

from gconv._utils import format_bytes
from gconv.linalg import _fp

_LOW_PRECISION = {torch.float16, torch.bfloat16}


def _np64(a, what: str) -> np.ndarray:
    """A float64 numpy array with the values of ``a`` (exact upcast; copies only when needed)."""
    if isinstance(a, torch.Tensor):
        if a.is_complex() or not (a.is_floating_point() or a.dtype in (torch.int32, torch.int64, torch.int16,
                                                                      torch.int8, torch.uint8, torch.bool)):
            raise TypeError(f"{what}: unsupported dtype {a.dtype}")
        if a.is_complex():
            raise TypeError(f"{what}: complex matrices are not supported")
        return a.detach().to(device="cpu", dtype=torch.float64).numpy()
    a = np.asarray(a)
    if a.dtype.kind == "c":
        raise TypeError(f"{what}: complex matrices are not supported")
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{what}: unsupported dtype {a.dtype}")
    if a.dtype == np.float64:
        return a
    if a.dtype.kind in "iu" and a.dtype.itemsize == 8 and a.size and np.abs(a).max() > 2 ** 53:
        raise ValueError(f"{what}: integers beyond 2^53 cannot be represented exactly in float64")
    return a.astype(np.float64)


def _dtype_name(a) -> str:
    if isinstance(a, torch.Tensor):
        return str(a.dtype).replace("torch.", "")
    return str(np.asarray(a).dtype) if not hasattr(a, "dtype") else str(getattr(a, "dtype"))


def _check_2d(a, what):
    shape = tuple(a.shape)
    if len(shape) != 2:
        raise ValueError(f"{what} must be 2-D, got shape {shape}")
    return shape


def check_block_finite(block: np.ndarray, start: int, what: str = "row block") -> None:
    """ValueError naming the offending row block (and the first bad entry) on NaN/Inf."""
    if not np.isfinite(block).all():
        r, c = np.argwhere(~np.isfinite(block))[0]
        kind = "NaN" if np.isnan(block).any() else "Inf"
        raise ValueError(f"{what} rows {start}–{start + block.shape[0] - 1} contains {kind} "
                         f"(first at row {start + int(r)}, column {int(c)})")


def _like(x, out: np.ndarray):
    """Return ``out`` (float64 numpy) as the same kind as the input ``x`` (torch → torch on x's device)."""
    if isinstance(x, torch.Tensor):
        return torch.from_numpy(out).to(x.device)
    return out


class ImplicitMatrix:
    """Base class; see the module docstring for the interface."""

    kind = "implicit"
    shape: tuple[int, int]
    source_dtype: str = "float64"
    block_rows: int = 1024
    deterministic_rows = True    # rows(s, e) returns the same bits every time

    @property
    def n(self) -> int:
        return self.shape[0]

    @property
    def D(self) -> int:
        return self.shape[1]

    @property
    def dtype(self):
        return torch.float64

    @property
    def ndim(self):
        return 2

    @property
    def T(self):
        from gconv.linalg.operators import Transposed
        return Transposed(self)

    def __repr__(self):
        return f"{type(self).__name__}(shape={self.shape}, source_dtype={self.source_dtype})"

    # -------------------------------------------------------------- rows
    def rows(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def row_blocks(self, block_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        b = block_rows or self.block_rows
        for s in range(0, self.n, b):
            e = min(s + b, self.n)
            yield s, self.rows(s, e)

    def to_dense(self, max_bytes=None) -> np.ndarray:
        from gconv._utils import parse_bytes
        need = self.n * self.D * 8
        lim = parse_bytes(max_bytes)
        if lim is not None and need > lim:
            raise MemoryError(f"{type(self).__name__}.to_dense: the matrix is {format_bytes(need)}, over "
                              f"max_bytes={format_bytes(lim)}")
        out = np.empty((self.n, self.D))
        for s, blk in self.row_blocks():
            out[s:s + blk.shape[0]] = blk
        return out

    # -------------------------------------------------------------- products (row-block streaming)
    def _mv(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((self.n,) + x.shape[1:])
        for s, blk in self.row_blocks():
            out[s:s + blk.shape[0]] = blk @ x
        return out

    def _rmv(self, y: np.ndarray) -> np.ndarray:
        out = np.zeros((self.D,) + y.shape[1:])
        for s, blk in self.row_blocks():
            out += blk.T @ y[s:s + blk.shape[0]]
        return out

    def _abs_mv(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((self.n,) + x.shape[1:])
        for s, blk in self.row_blocks():
            out[s:s + blk.shape[0]] = np.abs(blk) @ x
        return _fp.inflate_up(out, self.D, self.D)

    def _abs_rmv(self, y: np.ndarray) -> np.ndarray:
        out = np.zeros((self.D,) + y.shape[1:])
        for s, blk in self.row_blocks():
            out += np.abs(blk).T @ y[s:s + blk.shape[0]]
        return _fp.inflate_up(out, self.n, self.n)

    def _vec(self, x, m, what):
        a = _np64(x, what)
        if a.shape[0] != m or a.ndim > 2:
            raise ValueError(f"{type(self).__name__}.{what}: expected shape ({m},) or ({m}, k), got {a.shape}")
        return a

    def matvec(self, x):
        """A x (x of length D, or D × k)."""
        return _like(x, self._mv(self._vec(x, self.D, "matvec")))

    def rmatvec(self, y):
        """Aᵀ y (y of length n, or n × k)."""
        return _like(y, self._rmv(self._vec(y, self.n, "rmatvec")))

    mv, rmv = matvec, rmatvec

    def abs_matvec(self, x) -> np.ndarray:
        """An entrywise upper bound on |A| x for x ≥ 0 (rigorous)."""
        return self._abs_mv(self._vec(x, self.D, "abs_matvec"))

    def abs_rmatvec(self, y) -> np.ndarray:
        """An entrywise upper bound on |A|ᵀ y for y ≥ 0 (rigorous)."""
        return self._abs_rmv(self._vec(y, self.n, "abs_rmatvec"))

    def __matmul__(self, x):
        return self.matvec(x)

    def to_scipy(self):
        from scipy.sparse.linalg import LinearOperator
        return LinearOperator(self.shape, matvec=lambda v: self._mv(np.asarray(v, dtype=np.float64).reshape(-1)),
                              rmatvec=lambda v: self._rmv(np.asarray(v, dtype=np.float64).reshape(-1)),
                              matmat=lambda V: self._mv(np.asarray(V, dtype=np.float64)),
                              rmatmat=lambda V: self._rmv(np.asarray(V, dtype=np.float64)), dtype=np.float64)

    # -------------------------------------------------------------- columns (preconditioned route)
    def column_block(self, c0: int, c1: int) -> np.ndarray:
        """Columns c0 … c1−1 as an n × (c1 − c0) float64 array (default: through the rows)."""
        out = np.empty((self.n, c1 - c0))
        for s, blk in self.row_blocks():
            out[s:s + blk.shape[0]] = blk[:, c0:c1]
        return out

    @property
    def entry_error(self) -> float:
        """Relative error of one materialised entry w.r.t. the matrix the certificate is about (u for
        Khatri–Rao products, 0 where the stored numbers *are* the matrix)."""
        return 0.0


# ====================================================================== dense
class DenseMatrix(ImplicitMatrix):
    """A 2-D torch tensor or numpy array (any real dtype; upcast exactly to float64 block by block)."""

    kind = "dense"

    def __init__(self, A, name: str = "A"):
        if isinstance(A, torch.Tensor):
            if A.is_complex():
                raise TypeError(f"{name}: complex matrices are not supported")
            self._A = A.detach()
        else:
            A = np.asarray(A)
            if A.dtype == object:
                raise TypeError(f"{name}: cannot interpret an object array as a matrix")
            self._A = A
        self.shape = _check_2d(self._A, name)
        self.source_dtype = _dtype_name(self._A)
        self.device = str(self._A.device) if isinstance(self._A, torch.Tensor) else "cpu"
        self.name = name
        if self.shape[1] > 0:
            self.block_rows = int(max(1, min(self.shape[0] or 1, (64 << 20) // (8 * self.shape[1]))))

    @property
    def array(self):
        return self._A

    def rows(self, start, stop):
        return np.ascontiguousarray(_np64(self._A[start:stop], self.name))

    def column_block(self, c0, c1):
        return np.ascontiguousarray(_np64(self._A[:, c0:c1], self.name))

    def to_dense(self, max_bytes=None):
        return np.ascontiguousarray(_np64(self._A, self.name))


# ====================================================================== Khatri–Rao
class KhatriRao(ImplicitMatrix):
    """φ = S ⊙ Z, the row-wise Kronecker (Khatri–Rao) product: row i = s_i ⊗ z_i.

    Column k·m_Z + l holds s_ik·z_il, matching φ(q, θ) of seed 000 (Assumption 4): row i is
    [σ̃(z_iᵀq_{*1}) z_iᵀ, …, σ̃(z_iᵀq_{*m_H}) z_iᵀ] with S = σ̃(Zq) ∈ R^{n×m_H} and Z ∈ R^{n×m_{H−1}}.
    Its Gram matrix is φφᵀ = (SSᵀ) ∘ (ZZᵀ) (design notes §4), which is what gconv factors.
    """

    kind = "khatri_rao"

    def __init__(self, S, Z):
        for a, nm in ((S, "S"), (Z, "Z")):
            if not isinstance(a, (torch.Tensor, np.ndarray)):
                raise TypeError(f"KhatriRao: {nm} must be a torch.Tensor or numpy array, got {type(a).__name__}")
            _check_2d(a, f"KhatriRao: {nm}")
        if S.shape[0] != Z.shape[0]:
            raise ValueError(f"KhatriRao: S and Z must have the same number of rows (samples), got "
                             f"S {tuple(S.shape)} and Z {tuple(Z.shape)}")
        self.S_in, self.Z_in = S, Z
        self.mS, self.mZ = int(S.shape[1]), int(Z.shape[1])
        self.shape = (int(S.shape[0]), self.mS * self.mZ)
        dS, dZ = _dtype_name(S), _dtype_name(Z)
        self.source_dtype = dS if dS == dZ else f"{dS}/{dZ}"
        self.device = str(S.device) if isinstance(S, torch.Tensor) else "cpu"
        self._S = self._Z = None
        self.block_rows = int(max(1, min(self.n or 1, (64 << 20) // (8 * max(self.D, 1)))))

    @property
    def S(self) -> np.ndarray:
        if self._S is None:
            self._S = np.ascontiguousarray(_np64(self.S_in, "KhatriRao: S"))
        return self._S

    @property
    def Z(self) -> np.ndarray:
        if self._Z is None:
            self._Z = np.ascontiguousarray(_np64(self.Z_in, "KhatriRao: Z"))
        return self._Z

    def rows(self, start, stop):
        S, Z = self.S[start:stop], self.Z[start:stop]
        return (S[:, :, None] * Z[:, None, :]).reshape(stop - start, self.D)

    def column_block(self, c0, c1):
        out = np.empty((self.n, c1 - c0))
        for c in range(c0, c1):
            out[:, c - c0] = self.S[:, c // self.mZ] * self.Z[:, c % self.mZ]
        return out

    def column_groups(self, k0: int, k1: int) -> np.ndarray:
        """Columns of s-indices k0 … k1−1 (all l): n × ((k1−k0)·m_Z), i.e. [diag(s_k) Z]_k."""
        return (self.S[:, k0:k1, None] * self.Z[:, None, :]).reshape(self.n, (k1 - k0) * self.mZ)

    def _mv(self, x):
        X = x.reshape(self.mS, self.mZ, *x.shape[1:])
        if x.ndim == 1:
            return np.einsum("ik,il,kl->i", self.S, self.Z, X, optimize=True)
        return np.einsum("ik,il,klj->ij", self.S, self.Z, X, optimize=True)

    def _rmv(self, y):
        if y.ndim == 1:
            return (self.S.T @ (y[:, None] * self.Z)).reshape(-1)
        return np.einsum("ik,ij,il->klj", self.S, y, self.Z, optimize=True).reshape(self.D, -1)

    def _abs_mv(self, x):
        aS, aZ = np.abs(self.S), np.abs(self.Z)
        X = x.reshape(self.mS, self.mZ, *x.shape[1:])
        T = np.einsum("il,kl...->ik...", aZ, X)              # |Z| Xᵀ : inner length m_Z
        T = _fp.inflate_up(T, self.mZ, self.mZ)
        out = np.einsum("ik,ik...->i...", aS, T)              # inner length m_S
        return _fp.inflate_up(out, self.mS, self.mS)

    def _abs_rmv(self, y):
        aS, aZ = np.abs(self.S), np.abs(self.Z)
        if y.ndim == 1:
            T = _fp.inflate_up(aZ * y[:, None], 1, 1)
            return _fp.inflate_up(aS.T @ T, self.n, self.n).reshape(-1)
        T = _fp.inflate_up(np.einsum("ij,il->ijl", y, aZ), 1, 1)
        return _fp.inflate_up(np.einsum("ik,ijl->klj", aS, T), self.n, self.n).reshape(self.D, -1)

    @property
    def entry_error(self) -> float:
        return _fp.U  # fl(s·z) = s·z(1+δ) (+ underflow, covered separately)


# ====================================================================== activated features
def _softplus(zeta):
    def f(t):
        u = t * zeta
        return (torch.clamp_min(u, 0) + torch.log1p(torch.exp(-u.abs()))) / zeta
    f.__name__ = f"softplus(zeta={zeta:g})"
    return f


_ACTIVATIONS = {
    "relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
    "identity": (lambda t: t), "linear": (lambda t: t), "gelu": torch.nn.functional.gelu,
}


def resolve_activation(activation, zeta: float = 100.0) -> tuple[Callable, str]:
    if isinstance(activation, str):
        key = activation.lower()
        if key == "softplus":
            return _softplus(float(zeta)), f"softplus(zeta={float(zeta):g})"
        if key not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; use one of softplus, "
                             f"{', '.join(sorted(_ACTIVATIONS))} or a callable")
        return _ACTIVATIONS[key], key
    if callable(activation):
        name = getattr(activation, "__qualname__", None) or type(activation).__name__
        return activation, str(name)
    raise TypeError(f"activation must be a name or a callable, got {type(activation).__name__}")


class ActivatedFeatures(ImplicitMatrix):
    """H = [act(Z W + b), 1_n]: row i = [act(z_i W + b), 1] (the expressivity matrix [h_X, 1_n] of
    seeds 002/003, Assumption 1, when Z are the inputs of the last hidden layer).

    Z: n × m, W: m × width, b: width (or None), ``activation``: ``"softplus"`` (ζ = ``zeta``, default
    100 as in the papers), ``"relu"``, ``"sigmoid"``, ``"tanh"``, ``"gelu"``, ``"identity"`` or a
    callable on float64 torch tensors.  Features are evaluated in float64 in fixed blocks of
    ``block_rows`` rows; that float64 matrix is the one certified.
    """

    kind = "activated_features"

    def __init__(self, Z, W, b=None, activation="softplus", append_ones: bool = True, *, zeta: float = 100.0,
                 block_rows: int | None = None):
        for a, nm in ((Z, "Z"), (W, "W")):
            if not isinstance(a, (torch.Tensor, np.ndarray)):
                raise TypeError(f"ActivatedFeatures: {nm} must be a torch.Tensor or numpy array")
            _check_2d(a, f"ActivatedFeatures: {nm}")
        if Z.shape[1] != W.shape[0]:
            raise ValueError(f"ActivatedFeatures: Z is {tuple(Z.shape)} and W is {tuple(W.shape)}; need "
                             "Z.shape[1] == W.shape[0] (rows are act(z_i W + b))")
        width = int(W.shape[1])
        if b is not None:
            bs = tuple(b.shape)
            if bs not in ((width,), (1, width)):
                raise ValueError(f"ActivatedFeatures: b has shape {bs}, expected ({width},)")
        self.Z_in, self.W_in, self.b_in = Z, W, b
        self.act, self.activation_name = resolve_activation(activation, zeta)
        self.append_ones = bool(append_ones)
        self.width = width
        self.shape = (int(Z.shape[0]), width + (1 if self.append_ones else 0))
        self.source_dtype = _dtype_name(Z)
        self._Z = self._W = self._b = None
        if block_rows is None:
            block_rows = int(max(64, min(1024, (128 << 20) // (8 * max(self.D, 1)))))
        self.block_rows = int(block_rows)
        self._checksums: dict[int, float] = {}
        self._probe = None

    def _factors(self):
        if self._Z is None:
            self._Z = torch.from_numpy(np.ascontiguousarray(_np64(self.Z_in, "ActivatedFeatures: Z")))
            self._W = torch.from_numpy(np.ascontiguousarray(_np64(self.W_in, "ActivatedFeatures: W")))
            self._b = None if self.b_in is None else \
                torch.from_numpy(np.ascontiguousarray(_np64(self.b_in, "ActivatedFeatures: b")).reshape(-1))
        return self._Z, self._W, self._b

    def _eval_block(self, s: int, e: int) -> np.ndarray:
        from gconv.linalg._blas import mm
        Z, W, b = self._factors()
        pre = torch.from_numpy(mm(Z[s:e].numpy(), W.numpy()))
        if b is not None:
            pre = pre + b
        h = self.act(pre)
        if not isinstance(h, torch.Tensor) or h.shape != pre.shape:
            raise ValueError(f"ActivatedFeatures: the activation returned {type(h).__name__} "
                             f"{getattr(h, 'shape', '')}, expected a tensor of shape {tuple(pre.shape)}")
        out = np.empty((e - s, self.D))
        out[:, :self.width] = h.to(torch.float64).numpy()
        if self.append_ones:
            out[:, self.width] = 1.0
        return out

    def _block_fingerprint(self, blk: np.ndarray) -> float:
        if self._probe is None:
            self._probe = np.random.default_rng(12345).standard_normal(self.D)
        return float(np.abs(blk).sum() + (blk @ self._probe).sum())

    def rows(self, start, stop):
        """Rows start … stop−1, evaluated in the canonical blocks [j·B, (j+1)·B) (bitwise stable)."""
        B = self.block_rows
        out = np.empty((stop - start, self.D))
        j0, j1 = start // B, (stop - 1) // B if stop > start else start // B - 1
        for j in range(j0, j1 + 1):
            s, e = j * B, min((j + 1) * B, self.n)
            blk = self._eval_block(s, e)
            fp = self._block_fingerprint(blk)
            old = self._checksums.setdefault(j, fp)
            if old != fp and not (math.isnan(old) and math.isnan(fp)):
                raise RuntimeError(f"ActivatedFeatures: re-evaluating rows {s}–{e - 1} gave different bits "
                                   f"(checksum {fp!r} vs {old!r}); the feature evaluation is not deterministic, "
                                   "so no single matrix can be certified")
            a, z = max(s, start), min(e, stop)
            out[a - start:z - start] = blk[a - s:z - s]
        return out

    def row_blocks(self, block_rows=None):
        B = self.block_rows
        for s in range(0, self.n, B):
            e = min(s + B, self.n)
            yield s, self.rows(s, e)

    def column_block(self, c0, c1):
        Z, W, b = self._factors()
        out = np.empty((self.n, c1 - c0))
        w1 = min(c1, self.width)
        if c0 < w1:
            # same bits as rows(): evaluate through the canonical row blocks
            for s, blk in self.row_blocks():
                out[s:s + blk.shape[0], :w1 - c0] = blk[:, c0:w1]
        if self.append_ones and c1 > self.width:
            out[:, self.width - c0] = 1.0
        return out


# ====================================================================== generic row blocks
def _n_required_params(fn) -> int | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    return sum(1 for p in sig.parameters.values()
               if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


class RowBlocks(ImplicitMatrix):
    """A matrix given as consecutive blocks of rows.

    ``blocks_or_callable`` is one of

    * ``fn(start, stop)`` → rows start … stop−1 (random access; needs ``n``; ``D`` is read from the
      first block when not given).  It must return the same numbers every time (checked);
    * ``fn()`` → a fresh iterable of blocks (re-iterable);
    * a re-iterable object (list / tuple of blocks, or an object such as
      ``gconv.jacobian.Jacobian.row_blocks()`` whose ``__iter__`` starts over);
    * a one-shot iterator / generator — read once and stored (RAM or a disk file, as the memory plan
      decides) before any computation.

    Blocks are 2-D tensors or arrays of any real dtype with D columns (1-D blocks are one row).
    """

    kind = "row_blocks"

    def __init__(self, blocks_or_callable, n: int | None = None, D: int | None = None, *,
                 block_rows: int | None = None, name: str = "row blocks"):
        self.name = name
        self._fn = self._factory = self._iterable = self._oneshot = None
        src = blocks_or_callable
        shape = getattr(src, "shape", None)
        if n is None and shape is not None and len(shape) == 2:
            n, D = int(shape[0]), int(shape[1]) if D is None else D
        if callable(src) and not hasattr(src, "__iter__"):
            k = _n_required_params(src)
            if k == 0:
                self._factory = src
            elif k == 2 or k is None:
                self._fn = src
                if n is None:
                    raise ValueError("RowBlocks(fn(start, stop)) needs n (the number of rows)")
            else:
                raise TypeError("RowBlocks: a callable must be fn(start, stop) -> rows, or fn() -> iterable of blocks")
        elif hasattr(src, "__iter__"):
            if iter(src) is src:
                self._oneshot = src
            else:
                self._iterable = src
        else:
            raise TypeError(f"RowBlocks: expected blocks or a callable, got {type(src).__name__}")
        self._n, self._D = n, D
        self._store = None          # materialised rows (RowStore) for one-shot sources
        self._offsets = None        # block start offsets discovered in the first pass
        self._checksums: dict[tuple[int, int], float] = {}
        self._probe = None
        self.source_dtype = "float64"
        if block_rows is not None:
            self.block_rows = int(block_rows)
        if n is not None and D is not None:
            self.shape = (int(n), int(D))

    # shape may only be known after a first pass
    @property
    def shape(self):
        if self._n is None or self._D is None:
            self._discover()
        return (int(self._n), int(self._D))

    @shape.setter
    def shape(self, v):
        self._n, self._D = int(v[0]), int(v[1])

    @property
    def needs_materialisation(self) -> bool:
        return self._oneshot is not None and self._store is None

    def _to_block(self, blk, start):
        if isinstance(blk, torch.Tensor):
            self.source_dtype = _dtype_name(blk)
            a = _np64(blk, f"{self.name} block at row {start}")
        else:
            a = np.asarray(blk)
            self.source_dtype = str(a.dtype)
            a = _np64(a, f"{self.name} block at row {start}")
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2:
            raise ValueError(f"{self.name}: block at row {start} has shape {a.shape}; blocks must be 2-D")
        if self._D is not None and a.shape[1] != self._D:
            raise ValueError(f"{self.name}: block at row {start} has {a.shape[1]} columns, expected {self._D}")
        return np.ascontiguousarray(a)

    def _iter_raw(self):
        if self._fn is not None:
            b = self.block_rows
            for s in range(0, self._n, b):
                e = min(s + b, self._n)
                blk = self._fn(s, e)
                yield s, blk
            return
        it = self._factory() if self._factory is not None else (self._iterable if self._iterable is not None
                                                                  else None)
        if it is None:
            if self._store is not None:
                yield from self._store.blocks()
                return
            if getattr(self, "_consumed", False):
                raise RuntimeError(f"{self.name}: the one-shot iterator was already consumed")
            self._consumed = True
            it = self._oneshot
        s = 0
        for blk in it:
            yield s, blk
            s += int(blk.shape[0]) if getattr(blk, "ndim", 2) == 2 else 1

    def _discover(self):
        if self._oneshot is not None and self._store is None:
            raise ValueError(f"{self.name}: n and D are unknown for a one-shot iterator; pass n= and D=")
        if self._fn is not None:          # random access: one row tells D
            blk = self._fn(0, min(1, self._n))
            self._D = int(blk.shape[-1])
            return
        n, D = 0, None
        for s, blk in self._iter_raw():
            shp = tuple(blk.shape)
            D = shp[-1] if D is None else D
            n = s + (shp[0] if len(shp) == 2 else 1)
        if D is None:
            raise ValueError(f"{self.name} is empty (no blocks)")
        self._n, self._D = n if self._n is None else self._n, D if self._D is None else self._D

    def materialise(self, store) -> None:
        """Read a one-shot iterator once into ``store`` (a :class:`gconv.linalg.gram.RowStore`)."""
        pos = 0
        for s, blk in self._iter_raw():
            a = self._to_block(blk, s)
            check_block_finite(a, s, self.name)
            if pos + a.shape[0] > self.n:
                raise ValueError(f"{self.name}: the blocks hold more than n = {self.n} rows")
            store.write(pos, a)
            pos += a.shape[0]
        if pos != self.n:
            raise ValueError(f"{self.name}: the blocks hold {pos} rows, but n = {self.n}")
        self._store = store
        self._oneshot = None

    def _fingerprint(self, blk):
        if self._probe is None:
            self._probe = np.random.default_rng(12345).standard_normal(blk.shape[1])
        return float(np.abs(blk).sum() + (blk @ self._probe).sum())

    def row_blocks(self, block_rows=None):
        if self._store is not None:
            yield from self._store.blocks(block_rows or self.block_rows)
            return
        if self._oneshot is not None:
            raise RuntimeError(f"{self.name}: a one-shot iterator must be materialised first")
        for s, blk in self._iter_raw():
            a = self._to_block(blk, s)
            check_block_finite(a, s, self.name)
            key = (s, a.shape[0])
            fp = self._fingerprint(a)
            old = self._checksums.setdefault(key, fp)
            if old != fp:
                raise RuntimeError(f"{self.name}: rows {s}–{s + a.shape[0] - 1} changed between passes "
                                   "(the source is not deterministic); no single matrix can be certified")
            yield s, a

    def rows(self, start, stop):
        if self._store is not None:
            return self._store.read(start, stop)
        if self._fn is not None:
            b = self.block_rows
            out = np.empty((stop - start, self.D))
            for j in range(start // b, (stop - 1) // b + 1):
                s, e = j * b, min((j + 1) * b, self.n)
                a = self._to_block(self._fn(s, e), s)
                check_block_finite(a, s, self.name)
                if a.shape[0] != e - s:
                    raise ValueError(f"{self.name}: fn({s}, {e}) returned {a.shape[0]} rows")
                fp = self._fingerprint(a)
                old = self._checksums.setdefault((s, e - s), fp)
                if old != fp:
                    raise RuntimeError(f"{self.name}: fn({s}, {e}) returned different numbers on a second call; "
                                       "no single matrix can be certified")
                lo, hi = max(s, start), min(e, stop)
                out[lo - start:hi - start] = a[lo - s:hi - s]
            return out
        # re-iterable: walk to the rows (streaming; materialise for repeated random access)
        out = np.empty((stop - start, self.D))
        for s, a in self.row_blocks():
            e = s + a.shape[0]
            if e <= start:
                continue
            if s >= stop:
                break
            lo, hi = max(s, start), min(e, stop)
            out[lo - start:hi - start] = a[lo - s:hi - s]
        return out

    @property
    def random_access(self) -> bool:
        return self._fn is not None or self._store is not None


# ====================================================================== dispatch
def as_implicit(A, name: str = "A") -> ImplicitMatrix:
    """Wrap anything :func:`certify_full_row_rank` accepts as an :class:`ImplicitMatrix`."""
    if isinstance(A, ImplicitMatrix):
        return A
    if isinstance(A, (torch.Tensor, np.ndarray)):
        if A.ndim != 2:
            raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(A.shape)}")
        return DenseMatrix(A, name)
    try:
        import scipy.sparse as sp
        if sp.issparse(A):
            A = A.tocsr()
            return RowBlocks(lambda s, e: A[s:e].toarray(), n=A.shape[0], D=A.shape[1], name=f"{name} (sparse)")
    except ImportError:
        pass
    if hasattr(A, "row_blocks") and callable(A.row_blocks) and hasattr(A, "shape"):
        n, D = int(A.shape[0]), int(A.shape[1])
        return RowBlocks(lambda: A.row_blocks(), n=n, D=D, name=f"{name} (row_blocks)")
    from gconv.linalg.operators import as_operator
    op = as_operator(A, name=name)
    if op is not None:
        return op
    if isinstance(A, (list, tuple)) and A and all(hasattr(b, "shape") for b in A):
        return RowBlocks(A, name=name)
    raise TypeError(f"{name}: unsupported matrix type {type(A).__name__}; pass a tensor / array, a "
                    "gconv.linalg implicit matrix (KhatriRao, ActivatedFeatures, RowBlocks) or an operator "
                    "with .shape and matvec/rmatvec")
