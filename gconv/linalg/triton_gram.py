"""Fused float64 Hadamard-Gram panel for the Khatri–Rao Gram (design notes §4).

    out[i, j] = (Σ_k X[r0+i, k] X[c0+j, k]) · (Σ_l Y[r0+i, l] Y[c0+j, l]),  i < n − r0, j < w

i.e. the panel G[r0:, c0:c0+w] of G = (XXᵀ) ∘ (YYᵀ) = φφᵀ for φ = X ⊙ Y, without forming either
factor Gram: both inner products accumulate in registers and only their product is stored.

* ``hadamard_gram_reference`` — plain PyTorch (two GEMMs and a product): CPU path and test oracle;
* ``_hadamard_gram_kernel``    — Triton.  Triton's ``tl.dot`` has no float64 mode (triton-lang/triton
  #5483), so the kernel multiplies and reduces explicitly (FMA units); the inner products are
  still ordinary sums of products, so the error bound γ_{k_X+k_Y+1}|φ||φ|ᵀ of the certificate holds.
  Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (the tests).
"""
from __future__ import annotations

import torch

from gconv import _backends as B

_OP = "linalg_hadamard_gram"

try:
    import triton
    import triton.language as tl
    HAS_TRITON = True
except Exception:  # pragma: no cover - triton missing
    HAS_TRITON = False


def hadamard_gram_reference(X: torch.Tensor, Y: torch.Tensor, r0: int, c0: int, w: int,
                            out: torch.Tensor | None = None) -> torch.Tensor:
    """out = (X[r0:] X[c0:c0+w]ᵀ) ∘ (Y[r0:] Y[c0:c0+w]ᵀ)  (float64)."""
    P = (X[r0:] @ X[c0:c0 + w].T) * (Y[r0:] @ Y[c0:c0 + w].T)
    if out is None:
        return P
    out.copy_(P)
    return out


if HAS_TRITON:
    @triton.jit
    def _hadamard_gram_kernel(X, Y, OUT, n_rows, n_cols, kx, ky, r0, c0,
                              sxm, sxk, sym, syk, som, son,
                              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        mr = rm < n_rows
        mc = rn < n_cols
        gr = (r0 + rm).to(tl.int64)
        gc = (c0 + rn).to(tl.int64)
        accx = tl.zeros((BM, BN), dtype=tl.float64)
        for k0 in range(0, kx, BK):
            kk = k0 + tl.arange(0, BK)
            mk = kk < kx
            a = tl.load(X + gr[:, None] * sxm + kk[None, :] * sxk, mask=mr[:, None] & mk[None, :], other=0.0)
            b = tl.load(X + gc[:, None] * sxm + kk[None, :] * sxk, mask=mc[:, None] & mk[None, :], other=0.0)
            accx += tl.sum(a[:, None, :] * b[None, :, :], axis=2)
        accy = tl.zeros((BM, BN), dtype=tl.float64)
        for k0 in range(0, ky, BK):
            kk = k0 + tl.arange(0, BK)
            mk = kk < ky
            a = tl.load(Y + gr[:, None] * sym + kk[None, :] * syk, mask=mr[:, None] & mk[None, :], other=0.0)
            b = tl.load(Y + gc[:, None] * sym + kk[None, :] * syk, mask=mc[:, None] & mk[None, :], other=0.0)
            accy += tl.sum(a[:, None, :] * b[None, :, :], axis=2)
        o = OUT + rm.to(tl.int64)[:, None] * som + rn.to(tl.int64)[None, :] * son
        tl.store(o, accx * accy, mask=mr[:, None] & mc[None, :])


def hadamard_gram_triton(X: torch.Tensor, Y: torch.Tensor, r0: int, c0: int, w: int,
                         out: torch.Tensor | None = None, *, BM: int = 32, BN: int = 32, BK: int = 8):
    if not HAS_TRITON:
        raise RuntimeError("triton is not importable")
    n = X.shape[0]
    if out is None:
        out = torch.empty((n - r0, w), dtype=torch.float64, device=X.device)
    if out.shape != (n - r0, w):
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {(n - r0, w)}")
    grid = (triton.cdiv(n - r0, BM), triton.cdiv(w, BN))
    _hadamard_gram_kernel[grid](X, Y, out, n - r0, w, X.shape[1], Y.shape[1], r0, c0,
                                X.stride(0), X.stride(1), Y.stride(0), Y.stride(1), out.stride(0), out.stride(1),
                                BM=BM, BN=BN, BK=BK)
    return out


B.register(_OP, "triton", lambda dt: B.check_triton(dt))
B.register(_OP, "torch", B.check_torch)


def hadamard_gram(X: torch.Tensor, Y: torch.Tensor, r0: int, c0: int, w: int, out: torch.Tensor | None = None):
    """The panel (X[r0:]X[c0:c0+w]ᵀ)∘(Y[r0:]Y[c0:c0+w]ᵀ) with the implementation the registry picks."""
    for t, nm in ((X, "X"), (Y, "Y")):
        if t.dtype != torch.float64 or t.dim() != 2:
            raise ValueError(f"hadamard_gram: {nm} must be a 2-D float64 tensor")
    if X.shape[0] != Y.shape[0] or X.device != Y.device:
        raise ValueError("hadamard_gram: X and Y need the same rows and device")
    impl = B.select(_OP, X.device.type)
    if impl == "triton":
        return hadamard_gram_triton(X, Y, r0, c0, w, out)
    return hadamard_gram_reference(X, Y, r0, c0, w, out)
