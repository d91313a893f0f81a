"""The dense device route: the whole n × n Gram in (GPU) memory, one in-place Cholesky, and an
a-posteriori residual bound that makes the certificate independent of how the factorisation was done.

1. G̃_s (lower triangle; the Khatri–Rao panels by the fused Triton kernel of
   :mod:`gconv.linalg.triton_gram`, other sources by float64 GEMMs) in a zero-initialised n × n tensor;
2. Ã = G̃_s − c·I with the diagonal rounded towards −∞ (``torch.nextafter``);
3. L from ``torch.ops.gconv_cuda.linalg_potrf_inplace`` (cuSOLVER, in place — no second copy) when the
   CUDA extension is built, else ``torch.linalg.cholesky_ex`` (a second n × n copy, said in ``details``);
4. verification, block column by block column: Ã' (the Gram recomputed — any valid evaluation will do)
   and R̂ = fl(fl(L Lᵀ) − Ã'); then ‖L Lᵀ − Ã'‖₂ ≤ (1 + 2u)·max_i Σ_j |R̂_ij| + γ_n Σ_i ‖l_i‖² + n²η,
   so λ_min(G_s) ≥ c − that − ε_form — only conventional GEMMs enter the proof (docs/certification.md §6).

The same code runs on CPU tensors (``certify_full_row_rank(A, method="dense")``), which is how it is
tested on a machine without a GPU.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch

from gconv._utils import available_memory, format_bytes, parse_bytes, progress as _progress
from gconv.linalg import _fp
from gconv.linalg.certificate import CertificateStatus, MethodStep, RankCertificate
from gconv.linalg.cholesky import rump_rho_prior
from gconv.linalg.gram import KhatriRaoGram, RowsGram, khatri_rao_prepass, row_prepass
from gconv.linalg.implicit import DenseMatrix, KhatriRao
from gconv.linalg.plan import MemoryBudgetError
from gconv.linalg.qr_device import qr_route_device, qr_route_device_bytes
from gconv.linalg.triton_gram import hadamard_gram

_ETA = Fraction(1, 2 ** 1074)


def _native_potrf():
    from gconv import _backends as B
    ok, _ = B.check_cuda("cuda", "linalg_potrf_inplace")
    return torch.ops.gconv_cuda.linalg_potrf_inplace if ok else None


class _DeviceGram:
    """Panels of the scaled Gram on ``device``: G̃_s[r0:, c0:c0+w]."""

    def __init__(self, eng, src, device, chunk: int = 8192):
        self.eng, self.device, self.chunk = eng, device, chunk
        if isinstance(eng, KhatriRaoGram):
            self.X = torch.from_numpy(eng.X).to(device)
            self.Y = torch.from_numpy(eng.Y).to(device)
        else:
            self.src = src
            self.p2 = torch.from_numpy(np.ldexp(1.0, eng.exps)).to(device)     # exact powers of two
            A = src.array if isinstance(src, DenseMatrix) and isinstance(src.array, torch.Tensor) else None
            self.A = A.to(device=device, dtype=torch.float64) if A is not None and A.device.type == device.type \
                else None

    def _rows(self, s, e):
        if self.A is not None:
            R = self.A[s:e]
        else:
            R = torch.from_numpy(self.src.rows(s, e)).to(self.device)
        return R * self.p2[s:e, None]

    def panel_into(self, out: torch.Tensor, r0: int, c0: int, w: int) -> None:
        if isinstance(self.eng, KhatriRaoGram):
            hadamard_gram(self.X, self.Y, r0, c0, w, out=out)
            return
        Ad = self._rows(c0, c0 + w)
        nrow = out.shape[0]
        for r in range(0, nrow, self.chunk):
            r2 = min(r + self.chunk, nrow)
            torch.mm(self._rows(r0 + r, r0 + r2), Ad.T, out=out[r:r2])


def _factor_and_verify(dg, n, B, c, potrf, device, sync, timings, bar, eng, want_estimate=False):
    """Form Ã = G̃_s − c I, factor it in place, bound ‖L Lᵀ − Ã'‖₂; returns (info, λ lower bound,
    residual bound, λ_min(Ã) estimate or None)."""
    with timings.section("gram", sync_device=sync):
        G = torch.zeros((n, n), dtype=torch.float64, device=device)
        for c0 in range(0, n, B):
            w = min(B, n - c0)
            dg.panel_into(G[c0:, c0:c0 + w], c0, c0, w)
            blk = G[c0:c0 + w, c0:c0 + w]
            blk.copy_(torch.tril(blk))                            # keep the strict upper triangle zero
        d = torch.diagonal(G)
        d.copy_(torch.nextafter(d - c, torch.tensor(-math.inf, dtype=torch.float64, device=device)))
    if bar is not None:
        bar.update(1)
    with timings.section("cholesky", sync_device=sync):
        if potrf is not None:
            status = int(potrf(G, True))
            Lf = G
        else:
            Lf, inf_t = torch.linalg.cholesky_ex(G, upper=False)
            status = int(inf_t.item())
            del G
    if bar is not None:
        bar.update(1)
    if status != 0:
        return status, None, None, None
    with timings.section("verify", sync_device=sync):
        rows_abs = torch.zeros(n, dtype=torch.float64, device=device)
        lnorm2 = (Lf * Lf).sum(dim=1)
        T = torch.empty((n, B), dtype=torch.float64, device=device)
        P = torch.empty((n, B), dtype=torch.float64, device=device)
        ninf = torch.tensor(-math.inf, dtype=torch.float64, device=device)
        for c0 in range(0, n, B):
            w = min(B, n - c0)
            Tp, Pp = T[:n - c0, :w], P[:n - c0, :w]
            dg.panel_into(Tp, c0, c0, w)                          # Ã' (any valid evaluation of the Gram)
            dt = torch.diagonal(Tp[:w])
            dt.copy_(torch.nextafter(dt - c, ninf))
            torch.mm(Lf[c0:, :c0 + w], Lf[c0:c0 + w, :c0 + w].T, out=Pp)
            Pp.sub_(Tp).abs_()
            Pp[:w].copy_(torch.tril(Pp[:w]))                      # the panel's part of the lower triangle
            rows_abs[c0:] += Pp.sum(dim=1)
            rows_abs[c0:c0 + w] += Pp.sum(dim=0) - torch.diagonal(Pp[:w])   # mirrored strict lower part
        del T, P
        rs = rows_abs.cpu().numpy()
        ln = lnorm2.cpu().numpy()
        est = None
        if want_estimate:                                         # inverse iteration for λ_min(L Lᵀ)
            gen = torch.Generator(device=device).manual_seed(0)
            x = torch.randn(n, 1, dtype=torch.float64, device=device, generator=gen)
            x /= torch.linalg.norm(x)
            for _ in range(20):
                y = torch.linalg.solve_triangular(Lf, x, upper=False)
                y = torch.linalg.solve_triangular(Lf.T, y, upper=True)
                ny = float(torch.linalg.norm(y))
                if not math.isfinite(ny) or ny == 0:
                    break
                new = 1.0 / ny
                x = y / ny
                if est is not None and abs(new - est) <= 1e-3 * new:
                    est = new
                    break
                est = new
    if bar is not None:
        bar.update(1)
    del Lf
    # fl sums of non-negative terms: (n + 2) roundings each; the row sums added over ≤ 2·⌈n/B⌉ pieces
    # |fl(LLᵀ)_ij − (LLᵀ)_ij| ≤ γ_{min(i,j)+1}(|L||L|ᵀ)_ij (zero products add no rounding), hence
    # ‖·‖₂ ≤ Σ_i γ_{i+1}‖l_i‖² ≤ Σ_i (i+1)u(1 + 4(i+1)u)‖l_i‖² (rows l_i, 0-based i), summed exactly
    rmax = _fp.fr(float(_fp.inflate_up(rs, n + 2 * (n // B + 2), 0).max()))
    lu = _fp.inflate_up(ln, n, n)
    k = np.arange(1, n + 1, dtype=np.int64)
    u = _fp.fr(_fp.U)
    gemm = u * _fp.exact_sum(lu, weights=k) + 4 * u * u * _fp.exact_sum(lu, weights=k * k)
    resid = rmax * (1 + 4 * u) + gemm + 2 * n * n * _ETA
    lam = _fp.fr(c) - resid - eng.eps_form
    return 0, lam, resid, est


def _try_qr(src, stats, n, D, device, limit, timings, steps):
    if qr_route_device_bytes(n, D) > limit:
        steps.append(MethodStep("qr_preconditioned_gram_device", "skipped",
                                {"needs_bytes": qr_route_device_bytes(n, D), "limit_bytes": limit}))
        return None
    with timings.section("qr_route", sync_device=device if device.type == "cuda" else None):
        qr = qr_route_device(src, stats, device)
    steps.append(MethodStep("qr_preconditioned_gram_device", "certified" if qr.get("certified") else "inconclusive",
                            {k: v for k, v in qr.items() if k != "certified"}))
    return qr


def certify_dense_device(src, n, D, dev, *, memory_budget, progress, whiten, shift_factor, timings, steps,
                         precision, exact_verdict, tighten_margin=None) -> RankCertificate:
    device = torch.device(dev)
    with timings.section("prepass"):
        stats = khatri_rao_prepass(src) if isinstance(src, KhatriRao) else row_prepass(src)
    base = {"sigma_max_upper": _fp.sqrt_up(stats.frob_sq_up)}
    details = {"kind": src.kind, "device": str(device)}
    verdict = exact_verdict(stats, details, base)
    if verdict is not None:
        return verdict
    steps.append(MethodStep("exact_checks", "passed", {"fingerprint": stats.fingerprint}))
    potrf = _native_potrf() if device.type == "cuda" else None
    copies = 1 if potrf is not None else 2
    B = 4096 if device.type == "cuda" else 256
    need = 8 * n * n * copies + 8 * n * B * 3 + 8 * n * 64
    budget = parse_bytes(memory_budget)
    free = available_memory(device if device.type == "cuda" else None)
    limit = min(budget, int(free * 0.95)) if budget is not None else int(free * 0.9)
    if need > limit:
        raise MemoryBudgetError(f"the dense device route needs {format_bytes(need)} on {device} (the n × n Gram"
                                f"{'' if copies == 1 else ' and torch.linalg.cholesky’s second copy'}); the limit is "
                                f"{format_bytes(limit)}")
    with timings.section("engine"):
        eng = KhatriRaoGram(src, whiten=whiten) if isinstance(src, KhatriRao) else RowsGram(src, stats)
        dg = _DeviceGram(eng, src, device)
    rho_prior = rump_rho_prior(eng.diag_up)
    # the a-posteriori residual bound is ≈ ρ (GEMM part) + ‖R̂‖_∞: one ρ more headroom than the CPU route
    c = _fp.round_up((_fp.fr(shift_factor) + 1) * rho_prior + eng.eps_form + eng.transfer * eng.transfer)
    info = {"shift": c, "rho_prior": float(_fp.round_up(rho_prior)), "eps_form": float(_fp.round_up(eng.eps_form)),
            "whitening_error": float(_fp.round_up(eng.transfer)), "block": B,
            "factorisation": "cusolverDnXpotrf (in place)" if potrf is not None else
            ("torch.linalg.cholesky_ex (second copy)")}
    info.update(eng.details)
    if tighten_margin is None:
        tighten_margin = n <= 8192
    sync = device if device.type == "cuda" else None
    bar = _progress(total=3, desc=f"certify on {device} (n={n})", enabled=progress, unit="phase")
    status, lam, resid, lam_est = _factor_and_verify(dg, n, B, c, potrf, device, sync, timings, bar, eng,
                                                     want_estimate=bool(tighten_margin))
    bar.close()
    if status != 0:
        j = status - 1
        steps.append(MethodStep("dense_device_cholesky", "breakdown", dict(info, failed_column=j)))
        reason = (f"the Cholesky of the float64 Gram shifted by {c:.3e} (the rounding-error level) broke down at "
                  f"row {j}: λ_min of the scaled Gram is at or below what float64 can certify")
        qr = _try_qr(src, stats, n, D, device, limit, timings, steps)
        if qr is not None and qr.get("certified"):
            return RankCertificate(status=CertificateStatus.CERTIFIED_FULL_RANK, n=n, D=D, rank=n,
                                   sigma_min_lower=qr["sigma_min_lower"], methods=list(steps), precision=precision,
                                   details=dict(details, **info, failed_column=j, qr=qr), **base,
                                   reason=f"QR route on {device}: Householder-preconditioned Gram certified "
                                          f"(gershgorin); σ_min ≥ {qr['sigma_min_lower']:.3e}")
        if qr is not None:
            reason += "; QR route: " + qr.get("reason", "not certified")
        else:
            reason += (f"; the QR route (which does not square the condition number) needs "
                       f"{format_bytes(qr_route_device_bytes(n, D))} on {device}, over the limit {format_bytes(limit)}")
        return RankCertificate(status=CertificateStatus.INCONCLUSIVE, n=n, D=D, methods=list(steps),
                               precision=precision, details=dict(details, **info, failed_column=j,
                                                                 **({"qr": qr} if qr else {})),
                               reason=reason + " (run on CPU for a null vector and a rigorous σ_min upper bound)",
                               **base)
    info.update(residual_bound=float(_fp.round_up(resid)), lambda_min_lower_scaled=float(_fp.round_down(lam)))
    if tighten_margin and lam > 0 and lam_est is not None:
        c2 = _fp.round_up(0.5 * (c + lam_est))
        if c2 > 4 * c:
            st2, lam2, resid2, _ = _factor_and_verify(dg, n, B, c2, potrf, device, sync, timings, None, eng)
            ok = st2 == 0 and lam2 > lam
            steps.append(MethodStep("margin_refinement", "improved" if ok else "not improved", {"shift": c2}))
            if ok:
                lam, c, resid = lam2, c2, resid2
                info.update(refined_shift=c2, refined_residual_bound=float(_fp.round_up(resid2)),
                            lambda_min_lower_scaled=float(_fp.round_down(lam)))
    if lam <= 0 or _fp.fr(_fp.sqrt_down(lam)) <= eng.transfer:
        steps.append(MethodStep("dense_device_cholesky", "no_margin", info))
        return RankCertificate(status=CertificateStatus.INCONCLUSIVE, n=n, D=D, methods=list(steps),
                               precision=precision, details=dict(details, **info), **base,
                               reason=f"the factorisation succeeded but its verified residual {float(resid):.3e} plus "
                                      f"the Gram error {float(eng.eps_form):.3e} is not below the shift {c:.3e}")
    sig_t = _fp.fr(_fp.sqrt_down(lam)) - eng.transfer
    sig = _fp.round_down(sig_t * eng.sigma_scale)
    info["sigma_min_lower_scaled"] = _fp.round_down(sig_t)
    steps.append(MethodStep("dense_device_cholesky", "certified", info))
    return RankCertificate(status=CertificateStatus.CERTIFIED_FULL_RANK, n=n, D=D, rank=n, sigma_min_lower=sig,
                           methods=list(steps), precision=precision, details=dict(details, **info), **base,
                           reason=f"Cholesky of the float64 Gram shifted by {c:.3e} on {device}, verified a posteriori: "
                                  f"‖LLᵀ − Ã‖ ≤ {float(resid):.3e}, so λ_min ≥ {float(lam):.3e} > 0")
