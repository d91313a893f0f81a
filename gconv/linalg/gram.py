"""Gram accumulation with rigorous error bounds (docs/certification.md §2–3).

A *Gram engine* turns an implicit matrix into panels of a scaled Gram matrix G̃_s (binary64) and
the numbers the certificate needs:

* ``exps``        — row i of the certified matrix is 2^{e_i}·(row i) — an exact power-of-two scaling
                    (every scaled entry stays a normal number, checked per row), so that diag(G_s) ≈ 1;
* ``eps_form``    — ε with ‖G̃_s − G_s‖₂ ≤ ε, G_s the exact Gram of the rows the engine works with;
* ``transfer``    — w with σ_min(target) ≥ σ_min(rows) − w (the whitening error; 0 without whitening);
* ``sigma_scale`` — s with σ_min(original matrix) ≥ s·σ_min(target).

Khatri–Rao (``KhatriRaoGram``): φφᵀ = (SSᵀ) ∘ (ZZᵀ), with S, Z first whitened by exact triangular
transforms (S B, Z C with B = R_S⁻¹, C = R_Z⁻¹ from thin QRs, design notes §3(b)); entrywise
|fl(fl(XXᵀ) ∘ fl(YYᵀ)) − (XXᵀ)∘(YYᵀ)| ≤ γ_{k_X+k_Y+1} |φ||φ|ᵀ, so ε = γ_{k_X+k_Y+1}·Σ_i‖x_i‖²‖y_i‖².
Rows (``RowsGram``): dense arrays, ``ActivatedFeatures``, ``RowBlocks``: ε = γ_D·Σ_i‖a_i‖².
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import tempfile
from fractions import Fraction

import numpy as np
from scipy.linalg import lapack as _lapack

from gconv.linalg import _fp
from gconv.linalg._blas import mm, mm_nt
from gconv.linalg.implicit import ActivatedFeatures, ImplicitMatrix, KhatriRao, check_block_finite
from gconv.linalg.storage import read_rows

_ETA = Fraction(1, 2 ** 1074)


# ---------------------------------------------------------------- exact power-of-two row scaling
def row_exponents(A: np.ndarray) -> np.ndarray:
    """Integers e_i with ‖2^{e_i} a_i‖ ≈ 1 and 2^{e_i}·a_ij exact for every entry.

    A nonzero x with frexp exponent k (2^{k−1} ≤ |x| < 2^k) scales exactly by 2^e when the result is
    a normal number (e ≥ −1021 − k) and finite (e ≤ 1024 − k); subnormal inputs scale up exactly.
    Rows whose range allows no exact normalisation keep e = 0.
    """
    A = np.asarray(A, dtype=np.float64)
    n = A.shape[0]
    e = np.zeros(n, dtype=np.int64)
    if A.size == 0:
        return e
    absA = np.abs(A)
    amax = absA.max(axis=1)
    nz = amax > 0
    if not nz.any():
        return e
    kmax = _fp.pow2_exponent(amax)
    with np.errstate(invalid="ignore"):
        amin = np.where(absA > 0, absA, np.inf).min(axis=1)
    kmin = _fp.pow2_exponent(np.where(np.isfinite(amin), amin, 1.0))
    with np.errstate(under="ignore"):
        t = scale_rows(A[nz], -kmax[nz])
    nrm = np.sqrt(np.einsum("ij,ij->i", t, t))
    target = -kmax[nz] - np.round(np.log2(nrm)).astype(np.int64)
    lo, hi = -1021 - kmin[nz], 1020 - kmax[nz]
    ok = lo <= hi
    e_nz = np.where(ok, np.clip(target, lo, hi), 0)
    e[nz] = e_nz
    return e


def pow2(e) -> np.ndarray:
    """2.0**e exactly, elementwise (e integer in [−1074, 1023])."""
    return np.ldexp(1.0, np.asarray(e, dtype=np.int64))


def scale_rows(A: np.ndarray, e: np.ndarray) -> np.ndarray:
    """2^{e_i}·a_i (exact for exponents from :func:`row_exponents`: a product with a power of two is
    exact whenever the result is a normal number — the same value np.ldexp gives, much faster)."""
    e = np.asarray(e, dtype=np.int64)
    if e.size and (e.min() < -1022 or e.max() > 1023):
        return np.ldexp(A, e[:, None])
    with np.errstate(under="ignore", over="ignore"):
        return A * pow2(e)[:, None]


# ---------------------------------------------------------------- row store for one-shot sources
class RowStore:
    """n × D float64 rows in RAM or in a raw file (read back with plain reads)."""

    def __init__(self, n: int, D: int, *, directory: str | None = None):
        self.n, self.D = n, D
        self.directory = directory
        if directory is None:
            self._arr = np.empty((n, D))
            self.path = None
        else:
            os.makedirs(directory, exist_ok=True)
            fd, self.path = tempfile.mkstemp(dir=directory, prefix="rows-", suffix=".bin")
            os.close(fd)
            with open(self.path, "r+b") as fh:
                fh.truncate(n * D * 8)
            self._arr = None

    def write(self, start: int, block: np.ndarray) -> None:
        if self._arr is not None:
            self._arr[start:start + block.shape[0]] = block
        else:
            with open(self.path, "r+b") as fh:
                fh.seek(start * self.D * 8)
                np.ascontiguousarray(block, dtype=np.float64).tofile(fh)

    def read(self, start: int, stop: int) -> np.ndarray:
        if self._arr is not None:
            return self._arr[start:stop]
        return read_rows(self.path, self.D, start, stop)

    def blocks(self, block_rows: int = 1024):
        for s in range(0, self.n, block_rows):
            yield s, self.read(s, min(s + block_rows, self.n))

    def close(self):
        if self.path is not None and os.path.exists(self.path):
            os.unlink(self.path)
            self.path = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


# ---------------------------------------------------------------- pre-pass over the rows
@dataclasses.dataclass
class RowStats:
    n: int
    D: int
    exps: np.ndarray                 # row scaling exponents
    sumsq_scaled_up: np.ndarray      # ≥ ‖2^{e_i} a_i‖²
    frob_sq_up: Fraction             # ≥ ‖A‖_F²  (original rows)
    zero_rows: list
    duplicates: list                 # (i, j): row j equals row i (i < j)
    fingerprint: str


def _dup_groups(keys: np.ndarray) -> list[np.ndarray]:
    """Groups (index arrays, size ≥ 2) of rows whose key vectors are bitwise equal."""
    if keys.shape[0] < 2:
        return []
    k = np.ascontiguousarray(keys)
    v = k.view(np.dtype((np.void, k.dtype.itemsize * k.shape[1]))).ravel()
    order = np.argsort(v, kind="stable")
    vs = v[order]
    brk = np.nonzero(vs[1:] != vs[:-1])[0] + 1
    groups = np.split(order, brk)
    return [np.sort(g) for g in groups if g.size > 1]


def row_prepass(src: ImplicitMatrix, *, bar=None, what="row block") -> RowStats:
    """One pass over the rows: finiteness (error naming the block), zero rows, duplicate rows, exact
    scaling exponents, norms, and a fingerprint of the data."""
    n, D = src.shape
    exps = np.zeros(n, dtype=np.int64)
    ssq = np.zeros(n)
    rng = np.random.default_rng(20240917)
    probes = rng.standard_normal((D, 2))
    keys = np.zeros((n, 2))
    zero = np.zeros(n, dtype=bool)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{src.kind}:{n}x{D}".encode())
    hash_inputs = isinstance(src, ActivatedFeatures)
    if hash_inputs:   # the features are a function of (Z, W, b, activation): hash those instead
        Zf, Wf, bf = src._factors()
        for t in (Zf, Wf, bf):
            if t is not None:
                h.update(t.numpy().tobytes())
        h.update(f"{src.activation_name}:{src.append_ones}:{src.block_rows}".encode())
    for s, blk in src.row_blocks():
        e_ = s + blk.shape[0]
        check_block_finite(blk, s, what)
        zero[s:e_] = ~np.any(blk != 0, axis=1)
        ex = row_exponents(blk)
        sc = scale_rows(blk, ex)
        exps[s:e_] = ex
        ssq[s:e_] = _fp.sumsq_rows_up(sc)
        keys[s:e_] = (sc * _first_sign(sc)[:, None]) @ probes   # equal for rows equal up to ±2^k
        if not hash_inputs:
            h.update(np.ascontiguousarray(blk).tobytes())     # independent of the block boundaries
        if bar is not None:
            bar.update(blk.shape[0])
    frob = _fp.exact_sum(ssq, exponents=-2 * exps)
    zero_rows = np.nonzero(zero)[0].tolist()
    dups = []
    if isinstance(src, ActivatedFeatures):
        # identical inputs z_i = z_j give identical rows [act(z W + b), 1] for any activation
        Zin = src._factors()[0].numpy()
        kz = Zin @ rng.standard_normal((Zin.shape[1], 2))
        for g in _dup_groups(kz):
            g = g.tolist()
            for j in g[1:]:
                if np.array_equal(Zin[j], Zin[g[0]]):
                    dups.append((g[0], j, "1"))
    for g in _dup_groups(keys):
        g = [i for i in g.tolist() if not zero[i]]
        if len(g) < 2:
            continue
        i0 = g[0]
        r0 = src.rows(i0, i0 + 1)
        n0 = scale_rows(r0, exps[i0:i0 + 1])[0]
        n0 = n0 * _first_sign(n0[None])[0]
        for j in g[1:]:
            rj = src.rows(j, j + 1)
            nj = scale_rows(rj, exps[j:j + 1])[0]
            sj = _first_sign(nj[None])[0]
            if np.array_equal(nj * sj, n0) and not any(p[:2] == (i0, j) for p in dups):
                # row_j = (s_0 s_j)·2^{e_0 − e_j}·row_0 exactly
                f = Fraction(int(sj * _first_sign(scale_rows(r0, exps[i0:i0 + 1]))[0])) * \
                    Fraction(2) ** int(exps[i0] - exps[j])
                dups.append((i0, j, str(f)))
    dups = sorted(((p[0], p[1], p[2] if len(p) > 2 else "1") for p in dups))
    return RowStats(n, D, exps, ssq, frob, zero_rows, dups, h.hexdigest())


def _first_sign(A: np.ndarray) -> np.ndarray:
    """Sign of the first nonzero entry of each row (1 for zero rows)."""
    nz = A != 0
    first = np.argmax(nz, axis=1)
    v = A[np.arange(A.shape[0]), first]
    return np.where(v < 0, -1.0, 1.0)


def khatri_rao_prepass(kr: KhatriRao) -> RowStats:
    S, Z = kr.S, kr.Z
    check_block_finite(S, 0, "KhatriRao: S")
    check_block_finite(Z, 0, "KhatriRao: Z")
    n = kr.n
    zero = (~np.any(S != 0, axis=1)) | (~np.any(Z != 0, axis=1))
    es, ez = row_exponents(S), row_exponents(Z)
    Sn, Zn = scale_rows(S, es), scale_rows(Z, ez)
    sgS, sgZ = _first_sign(Sn), _first_sign(Zn)
    Sn, Zn = Sn * sgS[:, None], Zn * sgZ[:, None]            # s_i ⊗ z_i = ±2^{−e}·(Sn_i ⊗ Zn_i)
    rng = np.random.default_rng(20240917)
    keys = np.concatenate([Sn @ rng.standard_normal((kr.mS, 2)), Zn @ rng.standard_normal((kr.mZ, 2))], axis=1)
    dups = []
    for g in _dup_groups(keys):
        g = [i for i in g.tolist() if not zero[i]]
        i0 = g[0] if g else None
        for j in g[1:]:
            if np.array_equal(Sn[j], Sn[i0]) and np.array_equal(Zn[j], Zn[i0]):
                f = Fraction(int(sgS[i0] * sgZ[i0] * sgS[j] * sgZ[j])) * \
                    Fraction(2) ** int(es[i0] + ez[i0] - es[j] - ez[j])
                dups.append((i0, j, str(f)))
    h = hashlib.blake2b(digest_size=16)
    h.update(f"khatri_rao:{S.shape}:{Z.shape}".encode())
    h.update(np.ascontiguousarray(S).tobytes())
    h.update(np.ascontiguousarray(Z).tobytes())
    ns = _fp.sumsq_rows_up(scale_rows(S, es))
    nzz = _fp.sumsq_rows_up(scale_rows(Z, ez))
    prod = _fp.mul_up(ns, nzz)
    frob = _fp.exact_sum(prod, exponents=-2 * (es + ez))
    return RowStats(n, kr.D, es + ez, prod, frob, np.nonzero(zero)[0].tolist(), sorted(dups), h.hexdigest())


# ---------------------------------------------------------------- whitening (design notes §3(b))
def whitening_matrix(F: np.ndarray) -> tuple[np.ndarray | None, dict]:
    """A float matrix T (m × r) with F·T ≈ orthonormal columns: T = R⁻¹ (upper triangular, exactly
    invertible) from a thin QR F = QR, or — when R is numerically singular — V_r Σ_r⁻¹ from the SVD of
    R (a rank-lower-bound transform: rank(S⊙(ZT)) ≤ rank(S⊙Z), enough for a full-rank proof).
    None when whitening does not apply (fewer rows than columns)."""
    n, m = F.shape
    if n < m or m == 0:
        return None, {"whitening": "none", "why": f"{n} rows < {m} columns"}
    import scipy.linalg as sl
    R = sl.qr(F, mode="r", check_finite=False)[0][:m, :m]
    d = np.abs(np.diag(R))
    if d.min() > 64 * m * _fp.U * d.max():
        B, info = _lapack.dtrtri(R, lower=0)
        if info == 0 and np.isfinite(B).all():
            return np.triu(B), {"whitening": "triangular R^-1", "cond_R_diag": float(d.max() / d.min())}
    U_, s, Vt = np.linalg.svd(R)
    r = int(np.sum(s > 64 * m * _fp.U * s[0]))
    T = Vt[:r].T / s[:r]
    return T, {"whitening": "truncated SVD of R", "kept": r, "of": m,
               "cond_kept": float(s[0] / s[r - 1]) if r else math.inf}


# ---------------------------------------------------------------- engines
class GramEngine:
    kind = "gram"
    n: int
    exps: np.ndarray
    diag_up: np.ndarray
    eps_form: Fraction
    transfer: Fraction = Fraction(0)
    sigma_scale: Fraction = Fraction(1)
    flops_per_entry: float = 0.0
    details: dict

    def panel(self, s: int, w: int) -> np.ndarray:
        raise NotImplementedError


class KhatriRaoGram(GramEngine):
    """Panels of ((XXᵀ) ∘ (YYᵀ)) for the scaled, (optionally) whitened factors X = D_x S B, Y = D_y Z C."""

    kind = "khatri_rao"

    def __init__(self, kr: KhatriRao, *, whiten: bool = True, saved: dict | None = None, chunk_rows: int = 4096):
        S, Z = kr.S, kr.Z
        self.n = kr.n
        self.details = {}
        self.chunk_rows = chunk_rows
        if saved is not None:
            B, C = saved.get("B"), saved.get("C")
            self.details.update(saved.get("details", {}))
        elif whiten:
            B, iB = whitening_matrix(S)
            C, iC = whitening_matrix(Z)
            self.details.update({"whiten_S": iB, "whiten_Z": iC})
        else:
            B = C = None
            self.details.update({"whiten_S": {"whitening": "off"}, "whiten_Z": {"whitening": "off"}})
        self.B, self.C = B, C
        X = mm(S, B) if B is not None else S
        Y = mm(Z, C) if C is not None else Z
        ex = row_exponents(X) if saved is None or "ex" not in saved else saved["ex"]
        ey = row_exponents(Y) if saved is None or "ey" not in saved else saved["ey"]
        self.ex, self.ey = np.asarray(ex, dtype=np.int64), np.asarray(ey, dtype=np.int64)
        self.X = np.ascontiguousarray(scale_rows(X, self.ex))
        self.Y = np.ascontiguousarray(scale_rows(Y, self.ey))
        del X, Y
        self.exps = self.ex + self.ey
        kx, ky = self.X.shape[1], self.Y.shape[1]
        nx, ny = _fp.sumsq_rows_up(self.X), _fp.sumsq_rows_up(self.Y)
        self.diag_up = _fp.mul_up(nx, ny)
        n = self.n
        mx, my = _fp.fr(float(nx.max())), _fp.fr(float(ny.max()))
        self.eps_form = _fp.gamma(kx + ky + 1) * _fp.sum_up(self.diag_up) + \
            8 * n * (kx + ky + 1) * _ETA * (1 + mx) * (1 + my)
        self.flops_per_entry = 2.0 * (kx + ky) + 1
        # whitening error: φ̂_s − φ'_s = ΔX ⊙ Ŷ + X ⊙ ΔY with |ΔX| ≤ γ_{m_S}|S||B| (+ underflow), rows scaled
        self.transfer = Fraction(0)
        normB = normC = Fraction(1)
        if B is not None or C is not None:
            rx2 = self._delta_rows_sq(S, B, self.ex) if B is not None else np.zeros(n)
            ry2 = self._delta_rows_sq(Z, C, self.ey) if C is not None else np.zeros(n)
            t1 = _fp.sum_up(_fp.mul_up(rx2, ny))
            a = _fp.inflate_up(_fp.sqrt_vec_up(nx) + _fp.sqrt_vec_up(rx2), 1, 0)   # ≥ ‖x_i‖ (exact row)
            t2 = _fp.sum_up(_fp.mul_up(_fp.mul_up(a, a), ry2))
            self.transfer = _fp.fr(_fp.sqrt_up(t1)) + _fp.fr(_fp.sqrt_up(t2))
            if B is not None:
                normB = _fp.spectral_norm_upper(B)
            if C is not None:
                normC = _fp.spectral_norm_upper(C)
        emax = int(self.exps.max()) if n else 0
        self.sigma_scale = Fraction(1) / (Fraction(2) ** emax * normB * normC) if emax >= 0 else \
            Fraction(2) ** (-emax) / (normB * normC)
        self.details.update({"inner_lengths": [kx, ky], "row_scaling_exponents": [int(self.exps.min()),
                                                                                int(self.exps.max())]})

    @staticmethod
    def _delta_rows_sq(F, T, e):
        """Upper bounds on ‖2^{e_i}(fl(f_i T) − f_i T)‖² per row: γ_m·(|F||T|) + m·η entrywise."""
        m = F.shape[1]
        W = _fp.matmul_abs_up(F, T)
        g = _fp.round_up(_fp.gamma(m))
        E = _fp.inflate_up(W * g, 1, 1 + m)
        with np.errstate(under="ignore", over="ignore"):
            Es = E * pow2(e)[:, None] if (e.min() >= -1022 and e.max() <= 1023) else np.ldexp(E, e[:, None])
        Es = _fp.inflate_up(Es, 0, 1)
        return _fp.sumsq_rows_up(Es)

    def saved_state(self) -> dict:
        return {"B": self.B, "C": self.C, "ex": self.ex, "ey": self.ey, "details": self.details}

    def panel(self, s, w):
        n, X, Y = self.n, self.X, self.Y
        P = np.empty((n - s, w))
        c = self.chunk_rows
        Xd, Yd = X[s:s + w], Y[s:s + w]
        for r in range(s, n, c):
            r2 = min(r + c, n)
            np.multiply(mm_nt(X[r:r2], Xd), mm_nt(Y[r:r2], Yd), out=P[r - s:r2 - s])
        return P

    def gram_row(self, j: int, upto: int) -> np.ndarray:
        return (self.X[:upto] @ self.X[j]) * (self.Y[:upto] @ self.Y[j])


class RowsGram(GramEngine):
    """Panels of G̃_s = fl(A_s A_sᵀ), A_s = 2^{e}·A, rows read (or evaluated) block by block."""

    kind = "rows"

    def __init__(self, src: ImplicitMatrix, stats: RowStats, *, chunk_rows: int | None = None):
        self.src, self.n, self.D = src, src.n, src.D
        self.exps = stats.exps
        self.diag_up = stats.sumsq_scaled_up
        n, D = self.n, self.D
        self.eps_form = _fp.gamma(D) * _fp.sum_up(self.diag_up) + \
            8 * n * D * _ETA * (1 + _fp.fr(float(self.diag_up.max())))
        self.flops_per_entry = 2.0 * D
        self.sigma_scale = Fraction(2) ** (-int(self.exps.max())) if n else Fraction(1)
        br = max(1, src.block_rows)
        c = chunk_rows or max(br, ((32 << 20) // (8 * max(D, 1))) // br * br)
        self.chunk_rows = max(1, int(c))
        self.details = {"inner_length": D}

    def _scaled(self, s, e):
        return scale_rows(self.src.rows(s, e), self.exps[s:e])

    def panel(self, s, w):
        n = self.n
        P = np.empty((n - s, w))
        Ad = self._scaled(s, s + w)
        c = self.chunk_rows
        r = s
        while r < n:
            r2 = min(r + c, n)
            Ar = Ad[r - s:r2 - s] if r2 <= s + w else self._scaled(r, r2)
            mm_nt(Ar, Ad, out=P[r - s:r2 - s])
            r = r2
        return P

    def gram_row(self, j, upto):
        a = self._scaled(j, j + 1)[0]
        out = np.empty(upto)
        c = self.chunk_rows
        for r in range(0, upto, c):
            r2 = min(r + c, upto)
            out[r:r2] = self._scaled(r, r2) @ a
        return out
