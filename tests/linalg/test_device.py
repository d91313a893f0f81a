"""The dense device route (GPU path, exercised on CPU tensors here), the Triton Hadamard-Gram kernel
under TRITON_INTERPRET=1, and the GPU-only checks (skipped with the reason without a CUDA device)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import gconv.linalg as L
from gconv.linalg.triton_gram import hadamard_gram, hadamard_gram_reference


def test_dense_route_on_cpu_tensors(rng):
    A = rng.standard_normal((500, 700))
    smin = np.linalg.svd(A, compute_uv=False)[-1]
    c = L.certify_full_row_rank(torch.from_numpy(A), method="dense", progress=False)
    assert c.status == "CERTIFIED_FULL_RANK" and 0.2 * smin < c.sigma_min_lower <= smin
    step = [m for m in c.methods if m.method == "dense_device_cholesky"][0]
    assert step.details["factorisation"].startswith("torch.linalg.cholesky_ex")
    assert step.details["residual_bound"] > 0
    kr = L.KhatriRao(rng.random((400, 3)) + 0.1, rng.standard_normal((400, 200)))
    assert L.certify_full_row_rank(kr, method="dense", progress=False).status == "CERTIFIED_FULL_RANK"
    B = A.copy()
    B[10] = B[20]
    assert L.certify_full_row_rank(B, method="dense", progress=False).status == "CERTIFIED_RANK_DEFICIENT"
    C = A.copy()
    C[300] = 0.25 * C[1] - 0.3 * C[2]
    c = L.certify_full_row_rank(C, method="dense", progress=False)
    assert c.status == "INCONCLUSIVE" and c.details["failed_column"] == 300


def test_dense_route_falls_back_to_the_device_qr_route(rng):
    U, _ = np.linalg.qr(rng.standard_normal((120, 120)))
    V, _ = np.linalg.qr(rng.standard_normal((180, 120)))
    A = (U * np.logspace(0, -10, 120)) @ V.T                      # σ_min = 1e-10·σ_max: the Gram route fails
    c = L.certify_full_row_rank(torch.from_numpy(A), method="dense", progress=False)
    steps = [(m.method, m.outcome) for m in c.methods]
    assert ("dense_device_cholesky", "breakdown") in steps and ("qr_preconditioned_gram_device", "certified") in steps
    assert c.status == "CERTIFIED_FULL_RANK" and 0.3e-10 < c.sigma_min_lower <= np.linalg.svd(A, compute_uv=False)[-1]
    B = A.copy()
    B[50] = 0.3 * B[1] + 0.7 * B[2]
    assert L.certify_full_row_rank(torch.from_numpy(B), method="dense", progress=False).status == "INCONCLUSIVE"


def test_hadamard_gram_reference_dispatch(rng):
    X, Y = torch.from_numpy(rng.standard_normal((50, 3))), torch.from_numpy(rng.standard_normal((50, 7)))
    P = hadamard_gram(X, Y, 10, 10, 16)
    ref = ((X @ X.T) * (Y @ Y.T))[10:, 10:26]
    torch.testing.assert_close(P, ref, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError):
        hadamard_gram(X.float(), Y, 0, 0, 5)


_TRITON_SCRIPT = textwrap.dedent(r"""
    import torch, numpy as np
    from fractions import Fraction
    from gconv import _backends as B
    from gconv.linalg.triton_gram import hadamard_gram, hadamard_gram_reference, hadamard_gram_triton
    from gconv.linalg import _fp
    assert B.select("linalg_hadamard_gram", "cpu") == "triton"
    g = torch.Generator().manual_seed(0)
    cases = [(1, 1, 1, 0, 1), (37, 3, 11, 0, 37), (101, 5, 129, 32, 40), (70, 9, 20, 69, 1), (64, 2, 33, 16, 48)]
    for n, kx, ky, r0, w in cases:
        X = torch.randn(n, kx, generator=g, dtype=torch.float64) * 3
        Y = torch.randn(ky, n, generator=g, dtype=torch.float64).T        # non-contiguous
        got = hadamard_gram(X, Y, r0, r0, w)
        ref = hadamard_gram_reference(X, Y, r0, r0, w)
        # the kernel obeys the certificate's error model: |got - exact| <= γ_{kx+ky+1} |φ||φ|ᵀ
        absx = (X.abs()[r0:] @ X.abs()[r0:r0 + w].T) * (Y.abs()[r0:] @ Y.abs()[r0:r0 + w].T)
        gam = float(_fp.gamma(kx + ky + 1)) * 1.01
        for i in range(0, n - r0, max(1, (n - r0) // 5)):
            for j in range(0, w, max(1, w // 5)):
                ex = sum(Fraction(float(a)) * Fraction(float(b)) for a, b in zip(X[r0 + i], X[r0 + j])) * \
                     sum(Fraction(float(a)) * Fraction(float(b)) for a, b in zip(Y[r0 + i], Y[r0 + j]))
                assert abs(Fraction(float(got[i, j])) - ex) <= Fraction(gam * float(absx[i, j])) + Fraction(1, 2**1000)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
        G = torch.zeros(n, n, dtype=torch.float64)
        hadamard_gram_triton(X, Y, r0, r0, w, out=G[r0:, r0:r0 + w])      # strided output view
        assert torch.equal(G[r0:, r0:r0 + w], got)
    print("OK")
""")


def test_triton_hadamard_gram_interpreted(tmp_path):
    p = tmp_path / "t.py"
    p.write_text(_TRITON_SCRIPT)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, str(p)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


@pytest.mark.gpu
def test_gpu_dense_route_matches_cpu(rng):
    S, Z = rng.random((3000, 6)) + 0.05, rng.standard_normal((3000, 513))
    gpu = L.certify_full_row_rank(L.KhatriRao(torch.from_numpy(S).cuda(), torch.from_numpy(Z).cuda()), progress=False)
    cpu = L.certify_full_row_rank(L.KhatriRao(S, Z), progress=False)
    assert gpu.status == cpu.status == "CERTIFIED_FULL_RANK"
    assert gpu.details["device"].startswith("cuda")
    A = torch.from_numpy(rng.standard_normal((2000, 2200))).cuda()
    assert L.certify_full_row_rank(A, progress=False).status == "CERTIFIED_FULL_RANK"
    A[7] = A[8]
    assert L.certify_full_row_rank(A, progress=False).status == "CERTIFIED_RANK_DEFICIENT"


@pytest.mark.gpu
def test_gpu_triton_kernel_matches_reference(rng):
    X = torch.from_numpy(rng.standard_normal((1000, 7))).cuda()
    Y = torch.from_numpy(rng.standard_normal((1000, 513))).cuda()
    from gconv.linalg.triton_gram import hadamard_gram_triton
    torch.testing.assert_close(hadamard_gram_triton(X, Y, 256, 256, 300), hadamard_gram_reference(X, Y, 256, 256, 300),
                               rtol=1e-12, atol=1e-10)


@pytest.mark.gpu
def test_gpu_inplace_potrf(rng):
    from gconv import _backends as B
    ok, why = B.check_cuda("cuda", "linalg_potrf_inplace")
    if not ok:
        pytest.skip(f"the CUDA extension is not built: {why}")
    M = torch.from_numpy(rng.standard_normal((700, 900))).cuda()
    G = M @ M.T
    L_ref = torch.linalg.cholesky(G)
    H = G.clone()
    ptr = H.data_ptr()
    assert torch.ops.gconv_cuda.linalg_potrf_inplace(H, True) == 0 and H.data_ptr() == ptr
    torch.testing.assert_close(torch.tril(H), L_ref, rtol=1e-10, atol=1e-10)
    G[5, 5] = -1
    assert torch.ops.gconv_cuda.linalg_potrf_inplace(G.clone(), True) > 0
