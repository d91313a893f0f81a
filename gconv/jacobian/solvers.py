"""Matrix-free least squares in torch: LSQR (Paige & Saunders 1982) and LSMR (Fong & Saunders 2011).

Both solve min ‖A x − b‖² + damp²‖x‖² using only A·v and Aᵀ·u, so they run wherever the operator
runs (CPU or GPU, fp32 or fp64) and never form A. Stopping rules, ``istop`` codes and the norm
estimates follow ``scipy.sparse.linalg.lsqr`` / ``lsmr``:

====  ==========================================================================
0     b = 0 (or x0 already solves): x = 0 / x0 is the exact solution
1     ‖r‖ ≤ btol·‖b‖ + atol·‖A‖·‖x‖: A x ≈ b, a compatible system
2     ‖Aᵀr‖ ≤ atol·‖A‖·‖r‖: a least-squares solution
3     the estimate of cond(A) exceeded conlim
4     as 1, with atol = btol = machine epsilon of the operator's dtype
5     as 2, with atol = machine epsilon
6     cond(A) estimate ≥ 1/epsilon
7     the iteration limit was reached
====  ==========================================================================

The ‖A‖ and cond(A) values are the algorithms' running estimates (lower estimates in practice),
not bounds.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from gconv._utils import check_finite, progress as _progress

ISTOP_MEANING = {
    0: "b = 0 or the starting point solves the system exactly",
    1: "A x - b is small enough, given atol and btol (a compatible system)",
    2: "the least-squares solution is good enough, given atol",
    3: "the estimate of cond(A) has exceeded conlim",
    4: "A x - b is small enough for this machine precision",
    5: "the least-squares solution is good enough for this machine precision",
    6: "cond(A) seems to be too large for this machine precision",
    7: "the iteration limit has been reached",
}


@dataclass
class LstsqResult:
    """Result of :func:`lsqr` / :func:`lsmr` (the solution is ``.x``, kept out of the JSON fields)."""
    method: str
    istop: int
    message: str
    itn: int
    normr: float        # ‖b − A x‖ (the recurrence's estimate; with damp: of the augmented system)
    normar: float       # ‖Aᵀ(b − A x) − damp² x‖ estimate
    norma: float        # Frobenius-norm estimate of A (of the part explored)
    conda: float        # condition-number estimate
    normx: float
    normb: float
    seconds: float
    history: list = field(default_factory=list)   # (itn, normr, normar) every ``record_every`` iterations

    @property
    def converged(self) -> bool:
        return self.istop in (0, 1, 2, 4, 5)


class _DenseOp:
    def __init__(self, A):
        self.A = A
        self.shape, self.dtype, self.device = tuple(A.shape), A.dtype, A.device

    def mv(self, v):
        return self.A @ v

    def rmv(self, u):
        return self.A.T @ u


class _ScipyOp:
    def __init__(self, A):
        self.A = A
        self.shape = tuple(A.shape)
        self.dtype = torch.float64 if np.dtype(A.dtype).itemsize >= 8 else torch.float32
        self.device = torch.device("cpu")

    def mv(self, v):
        return torch.from_numpy(np.asarray(self.A.matvec(v.cpu().numpy()), dtype=np.float64).reshape(-1)).to(self.dtype)

    def rmv(self, u):
        return torch.from_numpy(np.asarray(self.A.rmatvec(u.cpu().numpy()), dtype=np.float64).reshape(-1)).to(self.dtype)


class RowScaled:
    """diag(w) · A as an operator (w > 0 row weights), e.g. √λ for a weighted least-squares loss."""

    def __init__(self, A, w: torch.Tensor):
        self.A = as_operator(A)
        self.shape, self.dtype, self.device = self.A.shape, self.A.dtype, self.A.device
        self.w = w.to(self.device, self.dtype).reshape(-1)
        if self.w.numel() != self.shape[0]:
            raise ValueError(f"RowScaled: {self.w.numel()} weights for {self.shape[0]} rows")

    def mv(self, v):
        return self.w * self.A.mv(v)

    def rmv(self, u):
        return self.A.rmv(self.w * u)


class ColScaled:
    """A · diag(s) (column scaling, a right preconditioner: Col(A·diag(s)) = Col(A) for s > 0)."""

    def __init__(self, A, s: torch.Tensor):
        self.A = as_operator(A)
        self.shape, self.dtype, self.device = self.A.shape, self.A.dtype, self.A.device
        self.s = s.to(self.device, self.dtype).reshape(-1)
        if self.s.numel() != self.shape[1]:
            raise ValueError(f"ColScaled: {self.s.numel()} scales for {self.shape[1]} columns")

    def mv(self, v):
        return self.A.mv(self.s * v)

    def rmv(self, u):
        return self.s * self.A.rmv(u)


def as_operator(A):
    """A dense 2-D torch tensor, an object with ``mv``/``rmv``/``shape`` (e.g. :class:`Jacobian`), or a
    SciPy LinearOperator / numpy array → an operator with ``mv``, ``rmv``, ``shape``, ``dtype``, ``device``."""
    if isinstance(A, torch.Tensor):
        if A.dim() != 2:
            raise ValueError(f"expected a 2-D matrix, got shape {tuple(A.shape)}")
        return _DenseOp(A)
    if hasattr(A, "mv") and hasattr(A, "rmv") and hasattr(A, "shape"):
        return A
    if isinstance(A, np.ndarray):
        return _DenseOp(torch.from_numpy(A))
    if hasattr(A, "matvec") and hasattr(A, "rmatvec"):
        return _ScipyOp(A)
    raise TypeError(f"cannot use a {type(A).__name__} as a linear operator")


def _sym_ortho(a: float, b: float):
    """Stable Givens rotation: (c, s, r) with [c s; -s c]·[a; b] = [r; 0]."""
    if b == 0:
        return math.copysign(1.0, a) if a != 0 else 1.0, 0.0, abs(a)
    if a == 0:
        return 0.0, math.copysign(1.0, b), abs(b)
    if abs(b) > abs(a):
        tau = a / b
        s = math.copysign(1.0, b) / math.sqrt(1 + tau * tau)
        return s * tau, s, b / s
    tau = b / a
    c = math.copysign(1.0, a) / math.sqrt(1 + tau * tau)
    return c, c * tau, a / c


def _setup(A, b, x0, who):
    op = as_operator(A)
    m, n = op.shape
    if isinstance(b, np.ndarray):
        b = torch.from_numpy(b)
    if not isinstance(b, torch.Tensor) or not b.is_floating_point():
        raise TypeError(f"{who}: b must be a real floating tensor")
    b = b.reshape(-1) if b.dim() == 2 and 1 in b.shape else b
    if b.shape != (m,):
        raise ValueError(f"{who}: b has shape {tuple(b.shape)}, the operator has {m} rows")
    check_finite(b, f"{who}: b")
    b = b.to(op.device, op.dtype)
    if x0 is not None:
        x0 = torch.as_tensor(x0)
        if x0.shape != (n,):
            raise ValueError(f"{who}: x0 has shape {tuple(x0.shape)}, the operator has {n} columns")
        check_finite(x0, f"{who}: x0")
        x0 = x0.to(op.device, op.dtype).clone()
    return op, m, n, b, x0


def _norm(t) -> float:
    return float(torch.linalg.vector_norm(t))


def _verdict(itn, maxiter, normr, normx, norma, normb, test2, test3, atol, btol, ctol, eps):
    """Paige–Saunders stopping rule shared by LSQR and LSMR → (istop, test1 = ‖r‖/‖b‖)."""
    test1 = normr / normb
    t1 = test1 / (1 + norma * normx / normb)
    rtol = btol + atol * norma * normx / normb
    eps = eps / 2          # "1 + t <= 1" in round-to-nearest ⇔ t ≤ eps/2
    istop = 0
    if itn >= maxiter:
        istop = 7
    if test3 <= eps:
        istop = 6
    if test2 <= eps:
        istop = 5
    if t1 <= eps:
        istop = 4
    if test3 <= ctol:
        istop = 3
    if test2 <= atol:
        istop = 2
    if test1 <= rtol:
        istop = 1
    return istop, test1


def _start(op, b, x, n):
    """First Golub–Kahan step from r₀ = b − A x₀: (x, u, β, v, α) with β u = r₀, α v = Aᵀu."""
    if x is None:
        x = torch.zeros(n, dtype=op.dtype, device=op.device)
        u = b.clone()
    else:
        u = b - op.mv(x)
    beta = _norm(u)
    if beta > 0:
        u = u / beta
        v = op.rmv(u)
        alpha = _norm(v)
    else:
        v = torch.zeros_like(x)
        alpha = 0.0
    if alpha > 0:
        v = v / alpha
    return x, u, beta, v, alpha


def _after_step(istop, itn, x, normr, normar, test1, test2, history, record_every, bar, callback):
    """Record the iteration (history, progress bar) and let ``callback`` stop it (istop 7)."""
    if record_every and itn % record_every == 0:
        history.append((itn, normr, normar))
    bar.update(1)
    bar.set_postfix_str(f"|r|/|b|={test1:.2e} |A'r|/(|A||r|)={test2:.2e}")
    if callback is not None and callback(itn, x, normr, normar) is True and istop == 0:
        istop = 7
    return istop


def _result(istop, itn, x, normr, normar, norma, conda, normx, t0, res) -> LstsqResult:
    out = LstsqResult(istop=istop, message=ISTOP_MEANING[istop], itn=itn, normr=normr, normar=normar, norma=norma,
                      conda=conda, normx=normx, seconds=time.perf_counter() - t0, **res)
    out.x = x
    return out


def lsqr(A, b, *, damp=0.0, atol=1e-6, btol=1e-6, conlim=1e8, maxiter=None, x0=None, callback=None,
         progress=False, record_every=1) -> LstsqResult:
    """LSQR for min ‖A x − b‖² + damp²‖x‖² (Paige & Saunders, ACM TOMS 8, 1982).

    ``A``: see :func:`as_operator`. ``maxiter`` defaults to 2·n (SciPy's default).
    ``callback(itn, x, normr, normar)`` runs every iteration (return True to stop: istop 7).
    Returns an :class:`LstsqResult`; the solution is ``result.x``.
    """
    t0 = time.perf_counter()
    op, m, n, b, x = _setup(A, b, x0, "lsqr")
    eps = torch.finfo(op.dtype).eps
    maxiter = 2 * n if maxiter is None else int(maxiter)
    ctol = 1.0 / conlim if conlim > 0 else 0.0
    dampsq = damp * damp
    anorm = acond = ddnorm = res2 = xnorm = xxnorm = z = 0.0
    cs2, sn2 = -1.0, 0.0
    bnorm = _norm(b)
    x, u, beta, v, alfa = _start(op, b, x, n)
    w = v.clone()
    rhobar, phibar = alfa, beta
    rnorm = beta
    arnorm = alfa * beta
    history = [(0, rnorm, arnorm)]
    res = dict(method="lsqr", normb=bnorm, history=history)
    if arnorm == 0:
        return _result(0, 0, x, rnorm, 0.0, 0.0, 1.0, _norm(x), t0, res)
    itn, istop = 0, 0
    bar = _progress(total=maxiter, desc="lsqr", enabled=bool(progress), unit="it")
    try:
        while itn < maxiter:
            itn += 1
            u = op.mv(v) - alfa * u
            beta = _norm(u)
            if beta > 0:
                u = u / beta
                anorm = math.sqrt(anorm ** 2 + alfa ** 2 + beta ** 2 + dampsq)
                v = op.rmv(u) - beta * v
                alfa = _norm(v)
                if alfa > 0:
                    v = v / alfa
            if damp > 0:
                rhobar1 = math.sqrt(rhobar ** 2 + dampsq)
                cs1, sn1 = rhobar / rhobar1, damp / rhobar1
                psi = sn1 * phibar
                phibar = cs1 * phibar
            else:
                rhobar1, psi = rhobar, 0.0
            cs, sn, rho = _sym_ortho(rhobar1, beta)
            theta = sn * alfa
            rhobar = -cs * alfa
            phi = cs * phibar
            phibar = sn * phibar
            tau = sn * phi
            wnorm = _norm(w)
            x = x + (phi / rho) * w
            w = v - (theta / rho) * w
            ddnorm += (wnorm / rho) ** 2
            delta = sn2 * rho
            gambar = -cs2 * rho
            rhs = phi - delta * z
            zbar = rhs / gambar
            xnorm = math.sqrt(xxnorm + zbar ** 2)
            gamma = math.sqrt(gambar ** 2 + theta ** 2)
            cs2, sn2 = gambar / gamma, theta / gamma
            z = rhs / gamma
            xxnorm += z ** 2
            acond = anorm * math.sqrt(ddnorm)
            res2 += psi ** 2
            rnorm = math.sqrt(phibar ** 2 + res2)
            arnorm = alfa * abs(tau)
            test2 = arnorm / (anorm * rnorm + eps)
            test3 = 1.0 / (acond + eps)
            istop, test1 = _verdict(itn, maxiter, rnorm, xnorm, anorm, bnorm, test2, test3, atol, btol, ctol, eps)
            istop = _after_step(istop, itn, x, rnorm, arnorm, test1, test2, history, record_every, bar, callback)
            if istop != 0:
                break
    finally:
        bar.close()
    return _result(istop, itn, x, rnorm, arnorm, anorm, acond, xnorm, t0, res)


def lsmr(A, b, *, damp=0.0, atol=1e-6, btol=1e-6, conlim=1e8, maxiter=None, x0=None, callback=None,
         progress=False, record_every=1) -> LstsqResult:
    """LSMR for min ‖A x − b‖² + damp²‖x‖² (Fong & Saunders, SIAM J. Sci. Comput. 33, 2011).

    ‖Aᵀr‖ decreases monotonically, which makes istop 2 (a least-squares point) reliable to detect.
    ``maxiter`` defaults to min(m, n) (SciPy's default). Other arguments as :func:`lsqr`.
    """
    t0 = time.perf_counter()
    op, m, n, b, x = _setup(A, b, x0, "lsmr")
    eps = torch.finfo(op.dtype).eps
    maxiter = min(m, n) if maxiter is None else int(maxiter)
    ctol = 1.0 / conlim if conlim > 0 else 0.0
    normb = _norm(b)
    x, u, beta, v, alpha = _start(op, b, x, n)
    zetabar, alphabar = alpha * beta, alpha
    rho = rhobar = cbar = 1.0
    sbar = 0.0
    h = v.clone()
    hbar = torch.zeros_like(x)
    betadd, betad, rhodold, tautildeold, thetatilde, zeta, dsum = beta, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0
    normA2 = alpha * alpha
    maxrbar, minrbar = 0.0, 1e100
    normA, condA, normx = math.sqrt(normA2), 1.0, _norm(x)
    normr, normar = beta, alpha * beta
    history = [(0, normr, normar)]
    res = dict(method="lsmr", normb=normb, history=history)
    if normar == 0 or normb == 0:
        return _result(0, 0, x if normb != 0 else torch.zeros_like(x), normr, 0.0, normA, condA, normx, t0, res)
    itn, istop = 0, 0
    bar = _progress(total=maxiter, desc="lsmr", enabled=bool(progress), unit="it")
    try:
        while itn < maxiter:
            itn += 1
            u = op.mv(v) - alpha * u
            beta = _norm(u)
            if beta > 0:
                u = u / beta
                v = op.rmv(u) - beta * v
                alpha = _norm(v)
                if alpha > 0:
                    v = v / alpha
            chat, shat, alphahat = _sym_ortho(alphabar, damp)
            rhoold = rho
            c, s, rho = _sym_ortho(alphahat, beta)
            thetanew = s * alpha
            alphabar = c * alpha
            rhobarold, zetaold = rhobar, zeta
            thetabar = sbar * rho
            rhotemp = cbar * rho
            cbar, sbar, rhobar = _sym_ortho(cbar * rho, thetanew)
            zeta = cbar * zetabar
            zetabar = -sbar * zetabar
            hbar = h - (thetabar * rho / (rhoold * rhobarold)) * hbar
            x = x + (zeta / (rho * rhobar)) * hbar
            h = v - (thetanew / rho) * h
            # ‖r‖ estimate
            betaacute = chat * betadd
            betacheck = -shat * betadd
            betahat = c * betaacute
            betadd = -s * betaacute
            thetatildeold = thetatilde
            ctildeold, stildeold, rhotildeold = _sym_ortho(rhodold, thetabar)
            thetatilde = stildeold * rhobar
            rhodold = ctildeold * rhobar
            betad = -stildeold * betad + ctildeold * betahat
            tautildeold = (zetaold - thetatildeold * tautildeold) / rhotildeold
            taud = (zeta - thetatilde * tautildeold) / rhodold
            dsum += betacheck * betacheck
            normr = math.sqrt(dsum + (betad - taud) ** 2 + betadd * betadd)
            # ‖A‖ and cond(A) estimates
            normA2 += beta * beta
            normA = math.sqrt(normA2)
            normA2 += alpha * alpha
            maxrbar = max(maxrbar, rhobarold)
            if itn > 1:
                minrbar = min(minrbar, rhobarold)
            condA = max(maxrbar, rhotemp) / min(minrbar, rhotemp)
            normar = abs(zetabar)
            normx = _norm(x)
            test2 = normar / (normA * normr) if normA * normr != 0 else math.inf
            test3 = 1.0 / condA
            istop, test1 = _verdict(itn, maxiter, normr, normx, normA, normb, test2, test3, atol, btol, ctol, eps)
            istop = _after_step(istop, itn, x, normr, normar, test1, test2, history, record_every, bar, callback)
            if istop != 0:
                break
    finally:
        bar.close()
    return _result(istop, itn, x, normr, normar, normA, condA, normx, t0, res)
