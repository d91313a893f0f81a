"""Seeded property test: no exactly rank-deficient matrix is ever CERTIFIED_FULL_RANK.

Every matrix below is rank deficient *exactly* as stored in binary64 (integer / dyadic data whose
dependencies hold without rounding), then disguised adversarially: rows scaled by huge or tiny powers
of two (down into the subnormal range), tiny-norm dependent rows, sign flips, permutations, exact
duplicates, Khatri–Rao structure.  The certifier may answer CERTIFIED_RANK_DEFICIENT or INCONCLUSIVE,
never CERTIFIED_FULL_RANK.  A control set of well-conditioned full-rank matrices must be certified.
"""
import numpy as np
import pytest

import gconv.linalg as L

N_DENSE, N_KR = 260, 90


def _deficient_dense(rng):
    n = int(rng.integers(2, 48))
    D = int(rng.integers(n, n + 40))
    k = int(rng.integers(1, n))                                     # rank ≤ k < n
    kind = rng.choice(["lowrank", "dup", "combo", "tiny", "zero_combo", "scaled_dup"])
    B = rng.integers(-4, 5, (k, D)).astype(float)
    C = rng.integers(-3, 4, (n, k)).astype(float)
    if kind == "lowrank":
        A = C @ B                                                   # exact: |entries| ≤ 48·k
    else:
        A = rng.integers(-64, 65, (n, D)).astype(float) / 8
        i, j = rng.choice(n, 2, replace=False)
        if kind == "dup":
            A[j] = A[i]
        elif kind == "scaled_dup":
            A[j] = A[i] * 2.0 ** int(rng.integers(-300, 300))      # exact power-of-two multiple
        elif kind == "combo":
            l_ = (i + 1 + int(rng.integers(0, n - 1))) % n
            if l_ == j:
                l_ = i
            A[j] = A[i] - 3 * A[l_] / 4
        elif kind == "tiny":                                        # a dependency among tiny-norm rows
            l_ = (i + 1) % n if (i + 1) % n != j else (i + 2) % n
            A[[i, l_]] *= 2.0 ** -1000
            A[j] = A[i] + A[l_]
        elif kind == "zero_combo":
            A[j] = 0.0 * A[j]
    # adversarial disguises that keep the rank exactly
    rs = rng.integers(-600, 600, n)
    if rng.random() < 0.5:
        with np.errstate(over="ignore", under="ignore"):
            B2 = np.ldexp(A, rs[:, None])
        if np.isfinite(B2).all() and np.array_equal(np.ldexp(B2, -rs[:, None]), A):   # only exact disguises
            A = B2
    A *= rng.choice([-1.0, 1.0], n)[:, None]
    A = A[rng.permutation(n)]
    return A, str(kind)


def _deficient_kr(rng):
    n = int(rng.integers(3, 40))
    mS, mZ = int(rng.integers(1, 4)), int(rng.integers(1, 12))
    while mS * mZ < n:
        mZ += 4
    S = rng.integers(1, 16, (n, mS)).astype(float) / 4
    Z = rng.integers(-16, 17, (n, mZ)).astype(float) / 8
    a, b, c = rng.choice(n, 3, replace=False)
    kind = rng.choice(["sum", "dup", "scaled", "rank1"])
    if kind == "sum":
        S[c] = S[a] + S[b]
        Z[a] = Z[b] = Z[c]
    elif kind == "dup":
        S[c], Z[c] = S[a], Z[a]
    elif kind == "scaled":                                          # s_c ⊗ z_c = (2^k s_a) ⊗ (2^-k z_a)
        k = int(rng.integers(-300, 300))
        S[c], Z[c] = np.ldexp(S[a], k), np.ldexp(Z[a], -k)
    else:                                                           # all z equal: rank ≤ rank(S) ≤ mS
        Z[:] = Z[0]
        if mS >= n:
            S[c] = S[a]
    return S, Z, str(kind)


@pytest.mark.slow
def test_no_rank_deficient_matrix_is_ever_certified_full_rank():
    rng = np.random.default_rng(20260917)
    counts = {}
    for t in range(N_DENSE):
        A, kind = _deficient_dense(rng)
        assert np.linalg.matrix_rank(A) < A.shape[0] or np.abs(A).max() < 1e-200
        c = L.certify_full_row_rank(A, progress=False)
        assert c.status != "CERTIFIED_FULL_RANK", (t, kind, A.shape)
        counts[(kind, c.status.value)] = counts.get((kind, c.status.value), 0) + 1
    for t in range(N_KR):
        S, Z, kind = _deficient_kr(rng)
        for wh in (True, False):
            c = L.certify_full_row_rank(L.KhatriRao(S, Z), whiten=wh, progress=False)
            assert c.status != "CERTIFIED_FULL_RANK", (t, kind, wh, S.shape, Z.shape)
            counts[("kr-" + kind, c.status.value)] = counts.get(("kr-" + kind, c.status.value), 0) + 1
    proven = sum(v for (k, s), v in counts.items() if s == "CERTIFIED_RANK_DEFICIENT")
    total = sum(counts.values())
    assert total == N_DENSE + 2 * N_KR
    print(sorted(counts.items()))
    assert proven >= 0.9 * total, counts          # most are *proven* deficient, not just inconclusive


@pytest.mark.slow
def test_well_conditioned_full_rank_matrices_are_certified():
    rng = np.random.default_rng(7)
    for t in range(60):
        n = int(rng.integers(1, 80))
        D = int(rng.integers(n, n + 60))
        A = rng.standard_normal((n, D)) * 2.0 ** int(rng.integers(-500, 500))
        if D == n:
            A += 4 * np.sqrt(n) * np.eye(n) * np.abs(A).max()
        c = L.certify_full_row_rank(A, progress=False)
        assert c.status == "CERTIFIED_FULL_RANK", (t, A.shape, c.reason)
        assert c.sigma_min_lower <= np.linalg.svd(A, compute_uv=False)[-1]
