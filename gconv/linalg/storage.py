"""Packed storage for the lower triangle of an n × n symmetric matrix and its Cholesky factor.

The lower triangle is kept as *block columns*: block column k holds rows r_k … n−1 of columns
r_k … r_k + b_k − 1 (r_k = k·b), a C-ordered (n − r_k) × b_k array.  This takes n(n+1)/2 + O(n·b)
numbers — half of a full n × n array, like LAPACK's RFP format — and, unlike RFP, every block column
is written exactly once by the left-looking Cholesky (:mod:`gconv.linalg.cholesky`), so a block
column on disk is a finished, immutable checkpoint.

Backends: ``"ram"`` (numpy arrays) or ``"disk"`` (one raw binary file per block column, read back
with plain reads — no memory map, so the resident set stays at the working panels).
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np
from scipy.linalg import blas as _blas


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _atomic_write(path: str, write) -> None:
    """write(fh) into a temporary file beside ``path``, fsync, rename over ``path``, fsync the folder."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(d)


def atomic_write_bytes(path: str, data: bytes) -> None:
    _atomic_write(path, lambda fh: fh.write(data))


def atomic_write_array(path: str, arr: np.ndarray) -> None:
    """Write the raw bytes of a C-contiguous float64 array atomically (tmp file + fsync + rename)."""
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    _atomic_write(path, arr.tofile)


def atomic_write_json(path: str, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def read_rows(path: str, ncols: int, row_start: int, row_stop: int, out: np.ndarray | None = None) -> np.ndarray:
    """Rows row_start … row_stop−1 of a raw C-ordered float64 file with ``ncols`` columns."""
    m = row_stop - row_start
    if out is None:
        out = np.empty((m, ncols), dtype=np.float64)
    with open(path, "rb", buffering=0) as fh:
        fh.seek(row_start * ncols * 8)
        mv = memoryview(out.reshape(-1).view(np.uint8))
        got = 0
        while got < mv.nbytes:
            k = fh.readinto(mv[got:])
            if not k:
                raise OSError(f"{path}: truncated (wanted {mv.nbytes} bytes from row {row_start})")
            got += k
    return out


class PackedLower:
    """Lower triangle of an n × n matrix in block columns of width ``block`` (see module docstring)."""

    def __init__(self, n: int, block: int, *, backend: str = "ram", directory: str | None = None,
                 prefix: str = "L"):
        if backend not in ("ram", "disk"):
            raise ValueError(f"unknown storage backend {backend!r}")
        if backend == "disk" and directory is None:
            raise ValueError("disk storage needs a directory")
        self.n, self.block, self.backend, self.directory, self.prefix = int(n), int(block), backend, directory, prefix
        self.nblocks = -(-self.n // self.block)
        self._cols: list[np.ndarray | None] = [None] * self.nblocks
        if directory is not None:
            os.makedirs(directory, exist_ok=True)

    # ------------------------------------------------------------------ geometry
    def start(self, k: int) -> int:
        return k * self.block

    def width(self, k: int) -> int:
        return min(self.block, self.n - k * self.block)

    def col_shape(self, k: int) -> tuple[int, int]:
        return self.n - self.start(k), self.width(k)

    def col_bytes(self, k: int) -> int:
        r, c = self.col_shape(k)
        return r * c * 8

    @staticmethod
    def packed_bytes(n: int, block: int) -> int:
        nb = -(-n // block)
        return sum((n - k * block) * min(block, n - k * block) for k in range(nb)) * 8

    def path(self, k: int) -> str:
        return os.path.join(self.directory, f"{self.prefix}_{k:05d}.bin")

    # ------------------------------------------------------------------ access
    def has(self, k: int) -> bool:
        if self._cols[k] is not None:
            return True
        return self.directory is not None and os.path.exists(self.path(k)) and \
            os.path.getsize(self.path(k)) == self.col_bytes(k)

    def set(self, k: int, arr: np.ndarray, *, persist: bool = False) -> None:
        """Store finished block column k (shape col_shape(k)); ``persist`` also writes it to disk."""
        if arr.shape != self.col_shape(k):
            raise ValueError(f"block column {k}: shape {arr.shape}, expected {self.col_shape(k)}")
        if self.backend == "disk" or persist:
            atomic_write_array(self.path(k), arr)
        self._cols[k] = arr if self.backend == "ram" else None

    def load(self, k: int) -> None:
        """RAM backend: bring block column k from its file (after a resume)."""
        if self.backend == "ram" and self._cols[k] is None:
            r, c = self.col_shape(k)
            self._cols[k] = read_rows(self.path(k), c, 0, r)

    def rows(self, k: int, r0: int, r1: int | None = None) -> np.ndarray:
        """Rows r0 … r1−1 (global indices, r0 ≥ start(k)) of block column k."""
        r1 = self.n if r1 is None else r1
        s = self.start(k)
        if r0 < s:
            raise IndexError(f"row {r0} is above the diagonal block of block column {k}")
        col = self._cols[k]
        if col is not None:
            return col[r0 - s:r1 - s]
        return read_rows(self.path(k), self.width(k), r0 - s, r1 - s)

    def get(self, k: int) -> np.ndarray:
        return self.rows(k, self.start(k))

    def release(self, k: int) -> None:
        self._cols[k] = None

    def release_all(self) -> None:
        self._cols = [None] * self.nblocks

    def nbytes_resident(self) -> int:
        return sum(c.nbytes for c in self._cols if c is not None)

    # ------------------------------------------------------------------ building a Gram in place
    def zero(self) -> None:
        for k in range(self.nblocks):
            self.set(k, np.zeros(self.col_shape(k)))

    def add_outer(self, C: np.ndarray, alpha: float = 1.0) -> None:
        """self += alpha · C Cᵀ (lower triangle; C is n × m, any layout)."""
        C = np.asarray(C, dtype=np.float64)
        if C.shape[0] != self.n:
            raise ValueError(f"add_outer: C has {C.shape[0]} rows, expected {self.n}")
        Ct = np.asfortranarray(C.T)  # m × n, F-ordered: column j is row j of C
        for k in range(self.nblocks):
            s, w = self.start(k), self.width(k)
            col = self.get(k) if self.backend == "ram" else self.get(k).copy()
            # colᵀ (F-order w × (n−s)) += alpha · C[s:s+w] C[s:]ᵀ
            _blas.dgemm(alpha, Ct[:, s:s + w], Ct[:, s:], beta=1.0, c=col.T, trans_a=1, overwrite_c=1)
            if self.backend == "disk":
                self.set(k, col)

    # ------------------------------------------------------------------ whole-matrix views
    def to_full(self, *, symmetric: bool = True) -> np.ndarray:
        """The n × n matrix (lower triangle mirrored when ``symmetric``; else zeros above)."""
        F = np.zeros((self.n, self.n))
        for k in range(self.nblocks):
            s, w = self.start(k), self.width(k)
            F[s:, s:s + w] = self.get(k)
        if symmetric:
            F = np.tril(F) + np.tril(F, -1).T
        else:
            F = np.tril(F)
        return F

    def diagonal(self) -> np.ndarray:
        d = np.empty(self.n)
        for k in range(self.nblocks):
            s, w = self.start(k), self.width(k)
            d[s:s + w] = np.diagonal(self.rows(k, s, s + w))
        return d

    def row_row(self, i: int, upto: int | None = None) -> np.ndarray:
        """Row i of the lower triangle, columns 0 … min(i, upto)−1."""
        upto = i if upto is None else min(i, upto)
        out = np.empty(upto)
        for k in range(self.nblocks):
            s, w = self.start(k), self.width(k)
            if s >= upto:
                break
            e = min(s + w, upto)
            out[s:e] = self.rows(k, i, i + 1)[0, :e - s]
        return out

    def abs_row_sums(self) -> np.ndarray:
        """Σ_j |M_ij| over the full symmetric matrix (both triangles), computed in binary64."""
        out = np.zeros(self.n)
        for k in range(self.nblocks):
            s, w = self.start(k), self.width(k)
            col = np.abs(self.get(k))
            blk, below = np.tril(col[:w]), col[w:]
            out[s:s + w] += blk.sum(axis=1) + np.tril(blk, -1).sum(axis=0) + below.sum(axis=0)
            out[s + w:] += below.sum(axis=1)
        return out

    # ------------------------------------------------------------------ triangular solves with L
    def solve_lower(self, rhs: np.ndarray, m: int) -> np.ndarray:
        """x with L[:m,:m] x = rhs (forward substitution), L the lower factor held here."""
        from scipy.linalg import solve_triangular
        x = np.array(rhs[:m], dtype=np.float64, copy=True)
        for k in range(self.nblocks):
            s, w = self.start(k), self.width(k)
            if s >= m:
                break
            e = min(s + w, m)
            Lk = self.rows(k, s, m)                     # rows s..m−1 of block column k
            x[s:e] = solve_triangular(Lk[:e - s, :e - s], x[s:e], lower=True, check_finite=False)
            if e < m:
                x[e:m] -= Lk[e - s:, :e - s] @ x[s:e]
        return x

    def solve_lower_t(self, rhs: np.ndarray, m: int) -> np.ndarray:
        """x with L[:m,:m]ᵀ x = rhs (back substitution)."""
        from scipy.linalg import solve_triangular
        x = np.array(rhs[:m], dtype=np.float64, copy=True)
        ks = [k for k in range(self.nblocks) if self.start(k) < m]
        for k in reversed(ks):
            s, w = self.start(k), self.width(k)
            e = min(s + w, m)
            Lk = self.rows(k, s, m)
            if e < m:
                x[s:e] -= Lk[e - s:, :e - s].T @ x[e:m]
            x[s:e] = solve_triangular(Lk[:e - s, :e - s], x[s:e], lower=True, trans=1, check_finite=False)
        return x
