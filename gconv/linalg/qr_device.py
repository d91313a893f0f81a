"""The QR route on a torch device (GPU; CPU tensors in the tests) — the same theorem as
:mod:`gconv.linalg.qr` (docs/certification.md §5), written with torch ops:

Householder QR of A_sᵀ (``torch.geqrf``) → R;  T = R⁻ᵀ (a triangular solve against I) — an exactly
invertible lower-triangular preconditioner;  P̂ = fl(T A_s) and G̃_P = fl(P̂P̂ᵀ) ≈ I by column chunks;
λ_min(G̃_P) by Gershgorin;  ‖F‖₂ = ‖P̂ − T A_s‖₂ ≤ γ_n ‖|T||A_s|‖₂ (+ n·η·√(nD)) by Collatz–Wielandt;
σ_min(A_s) ≥ (√(λ_P − ε_P) − ‖F‖₂) / ‖T‖₂.

Memory: A_s, its QR (torch allocates the factor), R / T and G̃_P — about n·D·2 + 3n² numbers on the device.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch

from gconv.linalg import _fp
from gconv.linalg.gram import RowStats
from gconv.linalg.qr import _cw_norm_sq_up

_ETA = Fraction(1, 2 ** 1074)


def qr_route_device_bytes(n: int, D: int) -> int:
    return 8 * (2 * n * D + 3 * n * n + 4 * n * 1024)


def qr_route_device(src, stats: RowStats, device, *, chunk: int = 1024) -> dict:
    device = torch.device(device)
    n, D = src.shape
    out = {"method": "qr_preconditioned_gram_device", "device": str(device), "n": n, "D": D}
    e0 = int(np.clip(stats.exps.min(), -1022, 1023))
    p2 = 2.0 ** e0
    # A_s on the device, one common power of two when exact (else per-row)
    As = torch.empty((n, D), dtype=torch.float64, device=device)
    uniform = True
    for s, blk in src.row_blocks():
        sc = blk * p2
        if uniform and not np.array_equal(sc / p2, blk):
            uniform = False
        As[s:s + blk.shape[0]] = torch.from_numpy(sc if uniform else blk)
    if uniform:
        e = np.full(n, e0, dtype=np.int64)
    else:
        e = stats.exps
        for s, blk in src.row_blocks():
            As[s:s + blk.shape[0]] = torch.from_numpy(np.ldexp(blk, e[s:s + blk.shape[0], None]))
    out["row_scaling"] = "uniform" if uniform else "per-row"
    a, _tau = torch.geqrf(As.T)                          # A_sᵀ = Q R
    R = torch.triu(a[:n, :n])
    del a, _tau
    d = R.diagonal().abs()
    dmax, dmin = float(d.max()), float(d.min())
    out["R_diag_ratio"] = dmin / dmax if dmax > 0 else 0.0
    if dmax == 0 or dmin <= 4 * n * _fp.U * dmax:
        out.update(certified=False, reason=f"R from the Householder QR is numerically singular (min|r_ii|/max|r_ii| = "
                                           f"{out['R_diag_ratio']:.1e})")
        return out
    eye = torch.eye(n, dtype=torch.float64, device=device)
    T = torch.linalg.solve_triangular(R.T, eye, upper=False)     # T = R⁻ᵀ (lower); any float matrix will do
    del R, eye
    T = torch.tril(T)
    if not bool(torch.isfinite(T).all()):
        out.update(certified=False, reason="the preconditioner R⁻ᵀ overflowed")
        return out
    G = torch.zeros((n, n), dtype=torch.float64, device=device)
    ssq = torch.zeros(n, dtype=torch.float64, device=device)
    nch = 0
    for c0 in range(0, D, chunk):
        c1 = min(c0 + chunk, D)
        Pc = T @ As[:, c0:c1]
        G.addmm_(Pc, Pc.T)
        ssq += (Pc * Pc).sum(dim=1)
        nch += 1
    ssq_up = _fp.inflate_up(ssq.cpu().numpy(), D + nch, D)
    epsP = _fp.gamma(D) * _fp.sum_up(ssq_up) + 8 * n * D * _ETA * (1 + _fp.fr(float(ssq_up.max())))
    absT = T.abs()
    absA = As.abs()

    def N(v):
        x = _fp.inflate_up((absA @ torch.from_numpy(v).to(device)).cpu().numpy(), D, D)
        return _fp.inflate_up((absT @ torch.from_numpy(x).to(device)).cpu().numpy(), n, n)

    def Nt(y):
        z = _fp.inflate_up((absT.T @ torch.from_numpy(y).to(device)).cpu().numpy(), n, n)
        return _fp.inflate_up((absA.T @ torch.from_numpy(z).to(device)).cpu().numpy(), n, n)

    normN2 = _cw_norm_sq_up(N, Nt, D)
    del absA
    Fnorm = _fp.gamma(n) * _fp.fr(_fp.sqrt_up(normN2)) + _fp.fr(_fp.sqrt_up(Fraction(n * D))) * n * _ETA
    frobT = _fp.sum_up(_fp.inflate_up((T * T).sum(dim=1).cpu().numpy(), n, n))
    normT2 = min(frobT, _cw_norm_sq_up(lambda v: _fp.inflate_up((absT @ torch.from_numpy(v).to(device)).cpu().numpy(),
                                                                  n, n),
                                       lambda y: _fp.inflate_up((absT.T @ torch.from_numpy(y).to(device))
                                                                .cpu().numpy(), n, n), n))
    normT = _fp.fr(_fp.sqrt_up(normT2))
    del absT, T, As
    diag = G.diagonal().cpu().numpy()
    rows = _fp.inflate_up(G.abs().sum(dim=1).cpu().numpy(), n, 0)
    del G
    m = float((2 * diag - rows).min())
    gl = _fp.fr(m) / (1 + _fp.fr(_fp.U)) if m > 0 else _fp.fr(m) / (1 - _fp.fr(_fp.U))
    lamP = gl - epsP
    out.update(F_norm_upper=float(_fp.round_up(Fnorm)), T_norm_upper=float(_fp.round_up(normT)),
               gram_P_error=float(_fp.round_up(epsP)), gershgorin_lower=float(_fp.round_down(gl)), how="gershgorin")
    if lamP <= 0 or Fnorm >= Fraction(1, 2):
        out.update(certified=False, reason=f"preconditioned Gram not certified by Gershgorin (λ ≥ {float(lamP):.3e}, "
                                           f"‖F‖ ≤ {float(Fnorm):.3e})")
        return out
    sig_TA = _fp.fr(_fp.sqrt_down(lamP)) - Fnorm
    if sig_TA <= 0:
        out.update(certified=False, reason="σ_min(P̂) does not exceed the error of forming P̂")
        return out
    sig_As = sig_TA / normT
    sig = sig_As * (Fraction(2) ** (-int(np.max(e))))
    if src.entry_error:
        sig -= _fp.fr(src.entry_error) * _fp.fr(_fp.sqrt_up(stats.frob_sq_up)) * (1 + _fp.gamma(2)) + \
            _fp.fr(_fp.sqrt_up(Fraction(n * D))) * _ETA
    if sig <= 0:
        out.update(certified=False, reason="the margin does not survive the error of materialising the products")
        return out
    out.update(certified=True, sigma_min_lower=_fp.round_down(sig), sigma_min_lower_scaled=_fp.round_down(sig_As))
    return out
