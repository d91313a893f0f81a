"""The EE head of seed 000, eq. 3.4 (Section 3.2.2; Algorithm 1 line 10).

    f_j(z) = Σ_k V[j,k] · g(R[j,k]·z̃) · (W[j,k]·z̃),   z̃ = [z, 1],   g(u) = sigmoid(ζ′u)

W = ``weight`` (m_y, m_H, m+1) is θ_(H−1) (its last column multiplies the constant neuron, i.e. it is
a bias); V = ``output_weight`` (m_y, m_H) is W^(H). Before the switch R = W (the self-gated unit
σ(q, q′) = σ̄(qq′)∘(qq′), gradient through both paths); after it R = ``gate_weight``, a frozen copy of
W (σ_R): a constant, never differentiated.

With N = m_y·m_H columns n = (j, k), a = z̃Wᵀ, r = z̃Rᵀ (r = a self-gated), s = g(r), and the
incoming gradient df (B, m_y):

    dV[n]    = Σ_b df[b,j] · s·a
    da       = df·V·s                     dr = df·V·a·ζ′·s(1−s)
    self-gated:  dP = da + dr,  dW = dPᵀ z̃,  dz = dP·W[:, :m]
    frozen R:    dW = daᵀ z̃,  dz = da·W[:, :m] + dr·R[:, :m]  (only when z needs a gradient)

How the work is laid out (per implementation, chosen by :mod:`gconv._backends`):

* ``triton`` (GPU; CPU tensors under ``TRITON_INTERPRET=1`` in the tests): the forward is one
  kernel — the z̃Wᵀ GEMM (and z̃Rᵀ on the same z tiles when R is frozen), the gate and V in the
  epilogue, and the reduction over k inside the program, per (batch tile, output j, k block). No
  B×N intermediate is written unless autograd needs it (see *saved tensors*). The backward is one
  kernel that produces dP (and dr) tiles and the dV column sums, followed by two GEMMs.
* ``cuda`` / ``cpp`` (csrc/cuda/ops_ee_head.cu, csrc/cpu/ops_ee_head.cpp, sharing the host code in
  csrc/cpu/ops_ee_head_host.h): vendor GEMMs (cuBLAS / the CPU BLAS) into a bounded row chunk,
  then one fused epilogue kernel per chunk — the intermediate memory is O(chunk·N), not O(B·N).
* ``torch``: the same formulas in plain PyTorch (a fallback for any device).

The constant neuron is never materialised: W[:, :m] is used as a strided view and W[:, m] as a bias.

Saved tensors (decided by measurement, docs/ops.md): when a gradient is needed, the forward saves
a (self-gated) or s and, if z or V needs a gradient, a (frozen R) — one or two B×N tensors, fewer
than eager autograd keeps — instead of recomputing them with another GEMM in backward.
``GCONV_EE_HEAD_BACKWARD=recompute`` selects recomputation (least memory) instead.
In the EE exploitation phase (R frozen, only θ_(H−1) trained) the backward is one elementwise pass
over the saved s and one GEMM: no dR, no dz, no dV work at all.

``torch.ops.gconv.ee_head`` is a ``torch.library`` custom op (fake kernel + autograd), so
``torch.compile(fullgraph=True)`` traces it. With ``create_graph=True`` the gradient is computed
through the reference's graph (differentiable again); inside torch.func transforms or forward-mode
AD the reference runs instead of the op.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from gconv import _backends as B
from gconv.ops._common import (HAS_TRITON, check_float_tensor, check_zeta, choose, forced_backend_name,
                               launch, native_op, split_f64, use_reference)

if HAS_TRITON:
    import triton
    import triton.language as tl

_OP = "ee_head"
SAVE_A, SAVE_S = 1, 2          # forward: which B×N tensors to keep for backward
NEED_Z, NEED_W, NEED_V = 1, 2, 4   # backward: which gradients to compute


# ====================================================================== reference
def ee_head_reference(z: torch.Tensor, weight: torch.Tensor, output_weight: torch.Tensor,
                      gate_weight: torch.Tensor | None = None, gate_zeta: float = 1.0) -> torch.Tensor:
    """Plain-PyTorch eq. 3.4, autograd through einsum (materialises z̃ and the B×m_y×m_H products).

    The tests' oracle. With ``gate_weight`` it differentiates through R as well (the fused op
    treats R as a constant instead).
    """
    zt = torch.cat([z, z.new_ones(z.shape[0], 1)], dim=1)
    u = torch.einsum("bi,jki->bjk", zt, weight)
    r = u if gate_weight is None else torch.einsum("bi,jki->bjk", zt, gate_weight)
    return torch.einsum("bjk,jk->bj", torch.sigmoid(gate_zeta * r) * u, output_weight)


# ====================================================================== plain-PyTorch kernels
def _empty0(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0)


def _flat(w: torch.Tensor):
    """(m_y, m_H, m+1) → (W[:, :m] as an (N, m) strided view, bias W[:, m] (N,))."""
    wf = w.reshape(-1, w.shape[-1])
    return wf[:, :-1], wf[:, -1]


def _fwd_torch(z, w, v, r, zeta, save):
    bsz, (m_y, m_h) = z.shape[0], v.shape
    wz, wb = _flat(w)
    a = torch.addmm(wb, z, wz.t())
    if r is None:
        s = torch.sigmoid(zeta * a)
    else:
        rz, rb = _flat(r)
        s = torch.sigmoid(zeta * torch.addmm(rb, z, rz.t()))
    out = (s * a * v.reshape(1, -1)).view(bsz, m_y, m_h).sum(-1)
    return out, (a if save & SAVE_A else _empty0(z)), (s if save & SAVE_S else _empty0(z))


def _bwd_torch(g, z, w, v, r, a, s, zeta, needs):
    bsz, (m_y, m_h) = z.shape[0], v.shape
    wz, wb = _flat(w)
    frozen = r is not None
    need_a = (not frozen) or needs & (NEED_Z | NEED_V)
    if need_a and a.numel() == 0:
        a = torch.addmm(wb, z, wz.t())
    if not frozen:
        s = torch.sigmoid(zeta * a)
    elif s.numel() == 0:
        rz, rb = _flat(r)
        s = torch.sigmoid(zeta * torch.addmm(rb, z, rz.t()))
    gv = (g[:, :, None] * v[None]).reshape(bsz, m_y * m_h)
    dz, dw, dv = _empty0(z), _empty0(z), _empty0(z)
    if needs & NEED_V:
        dv = (g[:, :, None] * (s * a).view(bsz, m_y, m_h)).sum(0)
    if needs & (NEED_Z | NEED_W):
        dp = gv * s
        dr = gv * a * (zeta * s * (1 - s)) if (frozen and needs & NEED_Z) or not frozen else None
        if not frozen:
            dp = dp + dr
        if needs & NEED_W:
            dw = torch.cat([dp.t() @ z, dp.sum(0)[:, None]], dim=1).view(w.shape)
        if needs & NEED_Z:
            dz = dp @ wz
            if frozen:
                dz = dz + dr @ _flat(r)[0]
    return dz, dw, dv


# ====================================================================== Triton kernels
def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 GEMM precision in the Triton kernels: 'ieee' (true fp32, the default, like cuBLAS with
    TF32 off) or 'tf32x3' (three TF32 tensor-core products, ~fp32 accuracy) via GCONV_FP32_DOT."""
    if dtype != torch.float32:
        return "ieee"
    p = os.environ.get("GCONV_FP32_DOT", "ieee")
    if p not in ("ieee", "tf32x3", "tf32"):
        raise ValueError(f"GCONV_FP32_DOT={p!r}; expected 'ieee', 'tf32x3' or 'tf32'")
    return p


if HAS_TRITON:
    @triton.jit
    def _ee_fwd_kernel(z_ptr, w_ptr, v_ptr, r_ptr, part_ptr, a_ptr, s_ptr,
                       Bsz, M, MH, MY, stride_zb, stride_zm, zeta_hi, zeta_mid, zeta_lo,
                       FROZEN: tl.constexpr, SAVE_A: tl.constexpr, SAVE_S: tl.constexpr,
                       F64: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
                       BB: tl.constexpr, BK: tl.constexpr, BM: tl.constexpr):
        # one program: batch rows [pid_b·BB, +BB) × output j × hidden units k in [pid_k·BK, +BK)
        pid_b = tl.program_id(0)
        j = tl.program_id(1)
        pid_k = tl.program_id(2)
        offs_b = (pid_b * BB + tl.arange(0, BB)).to(tl.int64)
        offs_k = pid_k * BK + tl.arange(0, BK)
        mask_b = offs_b < Bsz
        mask_k = offs_k < MH
        n = (j * MH + offs_k).to(tl.int64)              # flattened column (j, k)
        ldw = M + 1
        if F64:
            acc_t = tl.float64
            zeta = tl.cast(zeta_hi, tl.float64) + tl.cast(zeta_mid, tl.float64) + tl.cast(zeta_lo, tl.float64)
        else:
            acc_t = tl.float32
            zeta = tl.cast(zeta_hi, tl.float32)
        acc = tl.zeros((BB, BK), dtype=acc_t)
        acc_r = tl.zeros((BB, BK), dtype=acc_t)
        for m0 in range(0, M, BM):
            offs_m = m0 + tl.arange(0, BM)
            mask_m = offs_m < M
            zt = tl.load(z_ptr + offs_b[:, None] * stride_zb + offs_m[None, :] * stride_zm,
                         mask=mask_b[:, None] & mask_m[None, :], other=0.0)
            wt = tl.load(w_ptr + n[None, :] * ldw + offs_m[:, None],
                         mask=mask_k[None, :] & mask_m[:, None], other=0.0)
            if UPCAST:   # the interpreter's bf16 dot is broken; tests upcast (GPU: native bf16 MMA)
                zt = zt.to(tl.float32)
                wt = wt.to(tl.float32)
            acc = tl.dot(zt, wt, acc, input_precision=DOT_PREC, out_dtype=acc_t)
            if FROZEN:   # dual GEMM: the gate's z̃Rᵀ on the same z tile
                rt = tl.load(r_ptr + n[None, :] * ldw + offs_m[:, None],
                             mask=mask_k[None, :] & mask_m[:, None], other=0.0)
                if UPCAST:
                    rt = rt.to(tl.float32)
                acc_r = tl.dot(zt, rt, acc_r, input_precision=DOT_PREC, out_dtype=acc_t)
        a = acc + tl.load(w_ptr + n * ldw + M, mask=mask_k, other=0.0).to(acc_t)[None, :]
        if FROZEN:
            rr = acc_r + tl.load(r_ptr + n * ldw + M, mask=mask_k, other=0.0).to(acc_t)[None, :]
        else:
            rr = a
        s = 1.0 / (1.0 + tl.exp(-zeta * rr))
        v = tl.load(v_ptr + n, mask=mask_k, other=0.0).to(acc_t)
        contrib = tl.sum(s * a * v[None, :], axis=1)
        tl.store(part_ptr + (pid_k * Bsz + offs_b) * MY + j, contrib, mask=mask_b)
        N = MY * MH
        mask_bk = mask_b[:, None] & mask_k[None, :]
        if SAVE_A:
            tl.store(a_ptr + offs_b[:, None] * N + n[None, :], a.to(a_ptr.dtype.element_ty), mask=mask_bk)
        if SAVE_S:
            tl.store(s_ptr + offs_b[:, None] * N + n[None, :], s.to(s_ptr.dtype.element_ty), mask=mask_bk)

    @triton.jit
    def _ee_bwd_kernel(g_ptr, z_ptr, w_ptr, v_ptr, r_ptr, a_ptr, s_ptr, dp_ptr, dr_ptr, dvp_ptr, dwbp_ptr,
                       Bsz, M, MH, MY, stride_zb, stride_zm, stride_gb, zeta_hi, zeta_mid, zeta_lo,
                       FROZEN: tl.constexpr, HAVE_A: tl.constexpr, HAVE_S: tl.constexpr,
                       NEED_A: tl.constexpr, NEED_DP: tl.constexpr, NEED_DR: tl.constexpr,
                       NEED_DV: tl.constexpr, NEED_DWB: tl.constexpr, F64: tl.constexpr, DOT_PREC: tl.constexpr,
                       UPCAST: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr):
        # one program: batch rows [pid_b·BB, +BB) × flattened columns n in [pid_n·BN, +BN)
        pid_b = tl.program_id(0)
        pid_n = tl.program_id(1)
        N = MY * MH
        offs_b = (pid_b * BB + tl.arange(0, BB)).to(tl.int64)
        offs_n = (pid_n * BN + tl.arange(0, BN)).to(tl.int64)
        mask_b = offs_b < Bsz
        mask_n = offs_n < N
        mask_bn = mask_b[:, None] & mask_n[None, :]
        ldw = M + 1
        if F64:
            acc_t = tl.float64
            zeta = tl.cast(zeta_hi, tl.float64) + tl.cast(zeta_mid, tl.float64) + tl.cast(zeta_lo, tl.float64)
        else:
            acc_t = tl.float32
            zeta = tl.cast(zeta_hi, tl.float32)
        # recompute what was not saved (flash-style): a = z̃Wᵀ and/or r = z̃Rᵀ on the same z tiles
        RECOMP_A: tl.constexpr = NEED_A and not HAVE_A
        RECOMP_R: tl.constexpr = FROZEN and not HAVE_S
        acc = tl.zeros((BB, BN), dtype=acc_t)
        acc_r = tl.zeros((BB, BN), dtype=acc_t)
        if RECOMP_A or RECOMP_R:
            for m0 in range(0, M, BM):
                offs_m = m0 + tl.arange(0, BM)
                mask_m = offs_m < M
                zt = tl.load(z_ptr + offs_b[:, None] * stride_zb + offs_m[None, :] * stride_zm,
                             mask=mask_b[:, None] & mask_m[None, :], other=0.0)
                if UPCAST:
                    zt = zt.to(tl.float32)
                if RECOMP_A:
                    wt = tl.load(w_ptr + offs_n[None, :] * ldw + offs_m[:, None],
                                 mask=mask_n[None, :] & mask_m[:, None], other=0.0)
                    if UPCAST:
                        wt = wt.to(tl.float32)
                    acc = tl.dot(zt, wt, acc, input_precision=DOT_PREC, out_dtype=acc_t)
                if RECOMP_R:
                    rt = tl.load(r_ptr + offs_n[None, :] * ldw + offs_m[:, None],
                                 mask=mask_n[None, :] & mask_m[:, None], other=0.0)
                    if UPCAST:
                        rt = rt.to(tl.float32)
                    acc_r = tl.dot(zt, rt, acc_r, input_precision=DOT_PREC, out_dtype=acc_t)
        if RECOMP_A:
            a = acc + tl.load(w_ptr + offs_n * ldw + M, mask=mask_n, other=0.0).to(acc_t)[None, :]
        elif NEED_A:
            a = tl.load(a_ptr + offs_b[:, None] * N + offs_n[None, :], mask=mask_bn, other=0.0).to(acc_t)
        else:
            a = acc
        if FROZEN:
            if HAVE_S:
                s = tl.load(s_ptr + offs_b[:, None] * N + offs_n[None, :], mask=mask_bn, other=0.0).to(acc_t)
            else:
                rr = acc_r + tl.load(r_ptr + offs_n * ldw + M, mask=mask_n, other=0.0).to(acc_t)[None, :]
                s = 1.0 / (1.0 + tl.exp(-zeta * rr))
        else:
            s = 1.0 / (1.0 + tl.exp(-zeta * a))
        jn = offs_n // MH
        g = tl.load(g_ptr + offs_b[:, None] * stride_gb + jn[None, :], mask=mask_bn, other=0.0).to(acc_t)
        v = tl.load(v_ptr + offs_n, mask=mask_n, other=0.0).to(acc_t)
        gv = g * v[None, :]
        out_off = offs_b[:, None] * N + offs_n[None, :]
        if NEED_DP:
            if FROZEN:
                dp = gv * s
            else:
                dp = gv * (s + zeta * a * s * (1.0 - s))
            dp = dp.to(dp_ptr.dtype.element_ty)
            tl.store(dp_ptr + out_off, dp, mask=mask_bn)
            if NEED_DWB:   # bias column of dW: Σ_b dP, per batch tile
                tl.store(dwbp_ptr + pid_b * N + offs_n, tl.sum(dp.to(acc_t), axis=0), mask=mask_n)
        if NEED_DR:
            dr = gv * a * (zeta * s * (1.0 - s))
            tl.store(dr_ptr + out_off, dr.to(dr_ptr.dtype.element_ty), mask=mask_bn)
        if NEED_DV:
            tl.store(dvp_ptr + pid_b * N + offs_n, tl.sum(g * s * a, axis=0), mask=mask_n)

    def _configs(kind):
        cfgs = []
        for bb, bx, bm, warps, stages in ((64, 64, 32, 4, 3), (128, 64, 32, 8, 3), (64, 128, 32, 8, 3),
                                          (128, 128, 32, 8, 3), (64, 64, 64, 4, 4), (128, 64, 64, 8, 3),
                                          (32, 64, 32, 4, 4)):
            meta = {"BM": bm}
            if kind == "fwd":
                meta["BB"] = bb
            else:
                meta["BN"] = bx
            cfgs.append(triton.Config(meta, num_warps=warps, num_stages=stages))
        # de-duplicate (the fixed block is not part of the tuned meta-parameters)
        seen, out = set(), []
        for c in cfgs:
            key = (tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages)
            if key not in seen:
                seen.add(key)
                out.append(c)
        return out

    # BK (fwd) and BB (bwd) are fixed so the partial-sum buffers have a known size. The batch size is
    # not part of the tuning key: one tuning per layer shape, not per (last, partial) batch.
    _FWD_BK, _BWD_BB = 64, 64
    _ee_fwd_tuned = triton.autotune(_configs("fwd"), key=["M", "MH", "MY", "FROZEN", "SAVE_A",
                                                          "SAVE_S", "F64", "DOT_PREC"])(_ee_fwd_kernel)
    _ee_bwd_tuned = triton.autotune(_configs("bwd"), key=["M", "MH", "MY", "FROZEN", "HAVE_A", "HAVE_S",
                                                          "NEED_A", "NEED_DP", "NEED_DR", "NEED_DV", "NEED_DWB", "F64",
                                                          "DOT_PREC"])(_ee_bwd_kernel)

# the interpreter runs fixed small blocks (tl.dot needs ≥ 16), so odd test shapes exercise the masks
_INTERP_BLOCKS = 16


def _fwd_triton(z, w, v, r, zeta, save):
    bsz, m = z.shape
    m_y, m_h = v.shape
    n = m_y * m_h
    frozen = r is not None
    interp = B.triton_interpreting()
    bk = _INTERP_BLOCKS if interp else _FWD_BK
    nk = triton.cdiv(m_h, bk)
    part = torch.empty((nk, bsz, m_y), device=z.device, dtype=torch.float64 if z.dtype == torch.float64 else torch.float32)
    a = z.new_empty((bsz, n)) if save & SAVE_A else _empty0(z)
    s = z.new_empty((bsz, n)) if save & SAVE_S else _empty0(z)
    if bsz == 0:
        return z.new_zeros((0, m_y)), a, s
    args = (z, w, v, r if frozen else w, part, a, s, bsz, m, m_h, m_y, z.stride(0), z.stride(1), *split_f64(zeta))
    kw = dict(FROZEN=frozen, SAVE_A=bool(save & SAVE_A), SAVE_S=bool(save & SAVE_S),
              F64=z.dtype == torch.float64, DOT_PREC=_dot_precision(z.dtype),
              UPCAST=interp and z.dtype == torch.bfloat16)
    if interp:
        launch(_ee_fwd_kernel, (triton.cdiv(bsz, bk), m_y, nk), *args, **kw, BB=bk, BK=bk, BM=bk)
    else:
        grid = lambda meta: (triton.cdiv(bsz, meta["BB"]), m_y, nk)  # noqa: E731
        _ee_fwd_tuned[grid](*args, **kw, BK=bk)
    out = part[0] if nk == 1 else part.sum(0)
    return out.to(z.dtype), a, s


def _bwd_triton(g, z, w, v, r, a, s, zeta, needs):
    bsz, m = z.shape
    m_y, m_h = v.shape
    n = m_y * m_h
    frozen = r is not None
    need_dp = bool(needs & (NEED_Z | NEED_W))
    need_dr = frozen and bool(needs & NEED_Z)
    need_dv = bool(needs & NEED_V)
    need_a = (not frozen) or need_dr or need_dv
    interp = B.triton_interpreting()
    bb = _INTERP_BLOCKS if interp else _BWD_BB
    nb = triton.cdiv(bsz, bb)
    acc_dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    dp = z.new_empty((bsz, n)) if need_dp else _empty0(z)
    dr = z.new_empty((bsz, n)) if need_dr else _empty0(z)
    dvp = torch.empty((nb, n), device=z.device, dtype=acc_dtype) if need_dv else _empty0(z)
    need_dwb = bool(needs & NEED_W)
    dwbp = torch.empty((nb, n), device=z.device, dtype=acc_dtype) if need_dwb else _empty0(z)
    if bsz > 0 and (need_dp or need_dv):
        args = (g, z, w, v, r if frozen else w, a if a.numel() else z, s if s.numel() else z, dp, dr, dvp, dwbp,
                bsz, m, m_h, m_y, z.stride(0), z.stride(1), g.stride(0), *split_f64(zeta))
        kw = dict(FROZEN=frozen, HAVE_A=a.numel() > 0, HAVE_S=s.numel() > 0, NEED_A=need_a, NEED_DP=need_dp,
                  NEED_DR=need_dr, NEED_DV=need_dv, NEED_DWB=need_dwb, F64=z.dtype == torch.float64,
                  DOT_PREC=_dot_precision(z.dtype), UPCAST=interp and z.dtype == torch.bfloat16)
        if interp:
            launch(_ee_bwd_kernel, (nb, triton.cdiv(n, bb)), *args, **kw, BB=bb, BN=bb, BM=bb)
        else:
            grid = lambda meta: (nb, triton.cdiv(n, meta["BN"]))  # noqa: E731
            _ee_bwd_tuned[grid](*args, **kw, BB=bb)
    return _finish_backward(dp, dr, dvp, dwbp, z, w, v, r, needs)


def _finish_backward(dp, dr, dvp, dwbp, z, w, v, r, needs):
    """dW = dPᵀ z̃ (bias column = Σ of the per-tile column sums), dz = dP·W[:, :m] (+ dr·R[:, :m]),
    dV = Σ of the per-tile partials."""
    dz, dw, dv = _empty0(z), _empty0(z), _empty0(z)
    if needs & NEED_V:
        dv = (dvp.sum(0) if dvp.shape[0] != 1 else dvp[0]).to(v.dtype).view(v.shape)
    if needs & NEED_W:
        m = z.shape[1]
        dw2 = w.new_empty((dp.shape[1], m + 1))
        if dp.shape[0]:
            torch.mm(dp.t(), z, out=dw2[:, :m])
            dw2[:, m] = dwbp.sum(0)
        else:
            dw2.zero_()
        dw = dw2.view(w.shape)
    if needs & NEED_Z:
        dz = dp @ _flat(w)[0]
        if r is not None:
            dz.addmm_(dr, _flat(r)[0])
    return dz, dw, dv


# ====================================================================== implementations
_FWD = {
    "torch": _fwd_torch,
    "triton": _fwd_triton,
    "cpp": lambda *a: native_op("gconv_cpu", "ee_head_fwd")(*a),
    "cuda": lambda *a: native_op("gconv_cuda", "ee_head_fwd")(*a),
}
_BWD = {
    "torch": _bwd_torch,
    "triton": _bwd_triton,
    "cpp": lambda *a: native_op("gconv_cpu", "ee_head_bwd")(*a),
    "cuda": lambda *a: native_op("gconv_cuda", "ee_head_bwd")(*a),
}

B.register(_OP, "cuda", lambda dt: B.check_cuda(dt, "ee_head_fwd"))
B.register(_OP, "triton", B.check_triton)
B.register(_OP, "cpp", lambda dt: B.check_cpp(dt, "ee_head_fwd"))
B.register(_OP, "torch", B.check_torch)


# ====================================================================== custom ops
@torch.library.custom_op("gconv::ee_head", mutates_args=())
def _ee_head_op(z: torch.Tensor, weight: torch.Tensor, output_weight: torch.Tensor,
                gate_weight: Optional[torch.Tensor], gate_zeta: float, save: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (f, saved a or empty, saved s or empty); ``save`` is a SAVE_A | SAVE_S mask."""
    impl = choose(_OP, z.device.type)
    out, a, s = _FWD[impl](z, weight, output_weight, gate_weight, gate_zeta, save)
    return out, a, s


@_ee_head_op.register_fake
def _(z, weight, output_weight, gate_weight, gate_zeta, save):
    bsz, n = z.shape[0], output_weight.numel()
    return (z.new_empty((bsz, output_weight.shape[0])),
            z.new_empty((bsz, n)) if save & SAVE_A else z.new_empty(0),
            z.new_empty((bsz, n)) if save & SAVE_S else z.new_empty(0))


@torch.library.custom_op("gconv::ee_head_backward", mutates_args=())
def _ee_head_backward_op(grad: torch.Tensor, z: torch.Tensor, weight: torch.Tensor,
                         output_weight: torch.Tensor, gate_weight: Optional[torch.Tensor],
                         saved_a: torch.Tensor, saved_s: torch.Tensor, gate_zeta: float, needs: int,
                         backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dz, dW, dV), each empty when not requested by ``needs`` (NEED_Z | NEED_W | NEED_V)."""
    impl = choose(_OP, z.device.type, backend)
    dz, dw, dv = _BWD[impl](grad.contiguous(), z, weight, output_weight, gate_weight, saved_a, saved_s,
                            gate_zeta, needs)
    return dz, dw, dv


@_ee_head_backward_op.register_fake
def _(grad, z, weight, output_weight, gate_weight, saved_a, saved_s, gate_zeta, needs, backend):
    return (z.new_empty(z.shape) if needs & NEED_Z else z.new_empty(0),
            weight.new_empty(weight.shape) if needs & NEED_W else z.new_empty(0),
            output_weight.new_empty(output_weight.shape) if needs & NEED_V else z.new_empty(0))


def _setup(ctx, inputs, output):
    z, weight, output_weight, gate_weight, gate_zeta, _save = inputs
    _out, a, s = output
    ctx.save_for_backward(z, weight, output_weight, gate_weight, a, s)
    ctx.gate_zeta = gate_zeta
    ctx.backend = forced_backend_name()   # forward and backward on the same implementation
    ctx.mark_non_differentiable(a, s)
    # no zero-filled B×N gradients for the saved-tensor outputs (they are never differentiated)
    ctx.set_materialize_grads(False)


def _backward(ctx, grad, _ga, _gs):
    z, weight, output_weight, gate_weight, a, s = ctx.saved_tensors
    nz, nw, nv = ctx.needs_input_grad[:3]
    needs = (NEED_Z if nz else 0) | (NEED_W if nw else 0) | (NEED_V if nv else 0)
    if not needs or grad is None:
        return None, None, None, None, None, None
    if torch.is_grad_enabled():
        # create_graph=True (Hessian-vector products, gradient penalties): a gradient that is itself
        # differentiable, through the reference's autograd graph. First-order training never comes here.
        inputs = (z, weight, output_weight)
        want = [i for i in range(3) if ctx.needs_input_grad[i]]
        out = ee_head_reference(z, weight, output_weight, gate_weight, ctx.gate_zeta)
        got = torch.autograd.grad(out, [inputs[i] for i in want], grad, create_graph=True)
        res = [None] * 6
        for i, g in zip(want, got):
            res[i] = g
        return tuple(res)
    dz, dw, dv = torch.ops.gconv.ee_head_backward(grad, z, weight, output_weight, gate_weight, a, s,
                                                  ctx.gate_zeta, needs, ctx.backend)
    return (dz if nz else None), (dw if nw else None), (dv if nv else None), None, None, None


_ee_head_op.register_autograd(_backward, setup_context=_setup)


# ====================================================================== eager fast path
class _EEHeadFunction(torch.autograd.Function):
    """The same kernels and backward as the custom op, without the custom-op dispatch layers.

    Eager calls take this path (less per-call overhead at small batches); ``torch.compile``
    traces the custom op.
    """

    @staticmethod
    def forward(ctx, z, weight, output_weight, gate_weight, gate_zeta, save):
        out, a, s = _FWD[choose(_OP, z.device.type)](z, weight, output_weight, gate_weight, gate_zeta, save)
        ctx.save_for_backward(z, weight, output_weight, gate_weight, a, s)
        ctx.gate_zeta = gate_zeta
        ctx.backend = forced_backend_name()
        return out

    @staticmethod
    def backward(ctx, grad):
        grads = _backward(ctx, grad, None, None)
        return grads


# ====================================================================== public API
def _check(z, weight, output_weight, gate_weight):
    op = "ee_head"
    check_float_tensor(z, "z", op)
    check_float_tensor(weight, "weight", op)
    check_float_tensor(output_weight, "output_weight", op)
    if z.dim() != 2:
        raise ValueError(f"{op}: z must be 2-D (batch, in_features), got shape {tuple(z.shape)}")
    if weight.dim() != 3:
        raise ValueError(f"{op}: weight must be 3-D (out_features m_y, width m_H, in_features + 1), "
                         f"got shape {tuple(weight.shape)}")
    m_y, m_h, m1 = weight.shape
    if z.shape[1] + 1 != m1:
        raise ValueError(f"{op}: z has {z.shape[1]} features but weight {tuple(weight.shape)} expects "
                         f"{m1 - 1} (its last dimension is in_features + 1: the constant neuron)")
    if tuple(output_weight.shape) != (m_y, m_h):
        raise ValueError(f"{op}: output_weight must have shape (out_features, width) = {(m_y, m_h)} to match "
                         f"weight {tuple(weight.shape)}, got {tuple(output_weight.shape)}")
    tensors = [("weight", weight), ("output_weight", output_weight)]
    if gate_weight is not None:
        check_float_tensor(gate_weight, "gate_weight", op)
        if gate_weight.shape != weight.shape:
            raise ValueError(f"{op}: gate_weight must have the shape of weight {tuple(weight.shape)}, "
                             f"got {tuple(gate_weight.shape)}")
        if gate_weight.requires_grad:
            raise ValueError(f"{op}: gate_weight requires grad, but the frozen gate R is a constant "
                             "(seed 000, Alg. 1 line 10) and gets no gradient; pass gate_weight.detach()")
        tensors.append(("gate_weight", gate_weight))
    for name, t in tensors:
        if t.device != z.device:
            raise ValueError(f"{op}: z is on {z.device} but {name} is on {t.device}")
        if t.dtype != z.dtype:
            raise TypeError(f"{op}: z has dtype {z.dtype} but {name} has dtype {t.dtype}; "
                            "cast them to one dtype (or run under torch.autocast)")


def _strategy() -> str:
    s = os.environ.get("GCONV_EE_HEAD_BACKWARD", "save")
    if s not in ("save", "recompute"):
        raise ValueError(f"GCONV_EE_HEAD_BACKWARD={s!r}; expected 'save' or 'recompute'")
    return s


def ee_head(z: torch.Tensor, weight: torch.Tensor, output_weight: torch.Tensor,
            gate_weight: torch.Tensor | None = None, gate_zeta: float = 1.0) -> torch.Tensor:
    """Eq. 3.4 for a batch: f_j(z) = Σ_k V[j,k]·sigmoid(ζ′·R[j,k]·z̃)·(W[j,k]·z̃), z̃ = [z, 1].

    Args:
        z: (B, m) features of the (H−2)-th layer; the constant neuron is appended implicitly.
        weight: W = θ_(H−1), (m_y, m_H, m+1); ``weight[..., m]`` multiplies the constant neuron.
        output_weight: V = W^(H), (m_y, m_H).
        gate_weight: None before the switch (self-gated: R = W, gradient through both paths); after
            it a constant (m_y, m_H, m+1) tensor (σ_R, no gradient; must not require grad).
        gate_zeta: ζ′ of the gate sigmoid.
    Returns:
        (B, m_y) outputs. Under ``torch.autocast`` the inputs are cast to the autocast dtype.
    """
    gate_zeta = check_zeta(gate_zeta, "ee_head: gate_zeta")
    for name, t in (("z", z), ("weight", weight), ("output_weight", output_weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"ee_head: {name} must be a torch.Tensor, got {type(t).__name__}")
    if torch.is_autocast_enabled(z.device.type):
        dt = torch.get_autocast_dtype(z.device.type)
        z, weight, output_weight = z.to(dt), weight.to(dt), output_weight.to(dt)
        gate_weight = None if gate_weight is None else gate_weight.to(dt)
    _check(z, weight, output_weight, gate_weight)
    if not torch.compiler.is_compiling() and use_reference(z, weight, output_weight, gate_weight):
        return ee_head_reference(z, weight, output_weight,
                                 None if gate_weight is None else gate_weight.detach(), gate_zeta)
    weight = weight.contiguous()
    output_weight = output_weight.contiguous()
    gate_weight = None if gate_weight is None else gate_weight.contiguous()
    save = 0
    if torch.is_grad_enabled() and _strategy() == "save":
        nz, nw, nv = z.requires_grad, weight.requires_grad, output_weight.requires_grad
        if gate_weight is None:
            save = SAVE_A if (nz or nw or nv) else 0
        else:
            save = (SAVE_S if (nz or nw or nv) else 0) | (SAVE_A if (nz or nv) else 0)
    if torch.compiler.is_compiling():
        out, _a, _s = torch.ops.gconv.ee_head(z, weight, output_weight, gate_weight, gate_zeta, save)
        return out
    return _EEHeadFunction.apply(z, weight, output_weight, gate_weight, gate_zeta, save)
