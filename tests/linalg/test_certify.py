"""certify_full_row_rank: planted-rank families on dense and implicit sources, bad input, JSON, plans."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import gconv.linalg as L

FULL, DEF, INC = "CERTIFIED_FULL_RANK", "CERTIFIED_RANK_DEFICIENT", "INCONCLUSIVE"


def cert(A, **kw):
    kw.setdefault("progress", False)
    return L.certify_full_row_rank(A, **kw)


def planted(rng, n, D, smin):
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    V, _ = np.linalg.qr(rng.standard_normal((D, n)))
    return (U * np.logspace(0, np.log10(smin), n)) @ V.T


def as_sources(A):
    """The same matrix as a dense array, a torch tensor, row blocks (callable and list)."""
    return {"numpy": A, "torch": torch.from_numpy(A),
            "rowblocks_fn": L.RowBlocks(lambda s, e: A[s:e], n=A.shape[0], block_rows=37),
            "rowblocks_list": L.RowBlocks([A[i:i + 50] for i in range(0, A.shape[0], 50)])}


# ---------------------------------------------------------------- planted families (dense / row blocks)
def test_full_rank_family(rng):
    A = rng.standard_normal((150, 221))
    smin = np.linalg.svd(A, compute_uv=False)[-1]
    for name, src in as_sources(A).items():
        c = cert(src)
        assert c.status == FULL and c.rank == 150, name
        assert 0 < c.sigma_min_lower <= smin, name
        assert c.sigma_min_lower > 0.1 * smin, name           # refined margin is informative
        assert c.sigma_max_upper >= np.linalg.norm(A, 2), name
        assert c.certified_full_rank and c.status == "CERTIFIED_FULL_RANK"


def test_duplicated_row_family(rng):
    A = rng.standard_normal((120, 200))
    A[97] = A[13]
    for name, src in as_sources(A).items():
        c = cert(src)
        assert c.status == DEF, name
        assert c.details["identical_rows"][0] == [13, 97] and c.details["rank_upper_bound"] == 119, name


def test_exact_combination_row_is_proven_deficient(rng):
    A = rng.integers(-50, 51, (90, 130)).astype(float) * 0.25           # dyadic values: sums are exact
    A[70] = A[3] + 2 * A[41] - 0.5 * A[66]
    for name, src in as_sources(A).items():
        c = cert(src)
        assert c.status == DEF, name
        dep = c.details["dependency"]
        assert dep["row"] == 70 and sorted(dep["rows"]) == [3, 41, 66]
        assert sorted(dep["coefficients"]) == sorted(["1", "2", "-1/2"])


def test_rounded_combination_is_never_certified(rng):
    A = rng.standard_normal((80, 120))
    A[50] = 0.3 * A[1] + 0.7 * A[2]                                       # dependent up to rounding
    c = cert(A)
    assert c.status == INC
    smin = np.linalg.svd(A, compute_uv=False)[-1]
    assert c.details["sigma_min_upper"] >= smin
    assert c.details["sigma_min_upper_relative"] < 1e-12


def test_near_deficient_family_certified_by_qr_route(rng):
    A = planted(rng, 120, 180, 1e-10)
    smin = np.linalg.svd(A, compute_uv=False)[-1]
    c = cert(A)
    assert c.status == FULL
    steps = [(m.method, m.outcome) for m in c.methods]
    assert ("gram_cholesky", "breakdown") in steps and ("qr_preconditioned_gram", "certified") in steps
    assert 0 < c.sigma_min_lower <= smin and c.sigma_min_lower > 0.5 * smin
    c = cert(A, method="gram")
    assert c.status == INC and "qr_preconditioned_gram" not in [m.method for m in c.methods]


# ---------------------------------------------------------------- Khatri–Rao families
def test_khatri_rao_families(rng):
    n, mS, mZ = 200, 3, 90
    S, Z = rng.random((n, mS)) + 0.1, rng.standard_normal((n, mZ))
    phi = L.KhatriRao(S, Z).to_dense()
    smin = np.linalg.svd(phi, compute_uv=False)[-1]
    for wh in (True, False):
        c = cert(L.KhatriRao(S, Z), whiten=wh)
        assert c.status == FULL and 0 < c.sigma_min_lower <= smin, wh
    S2, Z2 = S.copy(), Z.copy()
    S2[150], Z2[150] = S2[7], Z2[7]
    assert cert(L.KhatriRao(S2, Z2)).status == DEF
    # exact dependency through the product structure: s_a = s_b + s_c, z_a = z_b = z_c (dyadic numbers)
    Si = rng.integers(1, 9, (n, mS)).astype(float) / 8
    Zi = rng.integers(-8, 9, (n, mZ)).astype(float) / 4
    Si[120] = Si[30] + Si[77]
    Zi[30] = Zi[77] = Zi[120]
    for wh in (True, False):
        c = cert(L.KhatriRao(Si, Zi), whiten=wh)
        assert c.status == DEF, wh
        assert c.details["dependency"]["row"] == 120 and sorted(c.details["dependency"]["rows"]) == [30, 77]
    # near-deficient: s_a = s_b + s_c + 1e-10·noise
    S3, Z3 = S.copy(), Z.copy()
    S3[120] = S3[30] + S3[77] + 1e-10 * rng.standard_normal(mS)
    Z3[30] = Z3[77] = Z3[120]
    c = cert(L.KhatriRao(S3, Z3))
    assert c.status in (FULL, INC)
    if c.status == FULL:
        assert c.sigma_min_lower <= np.linalg.svd(L.KhatriRao(S3, Z3).to_dense(), compute_uv=False)[-1]


def test_whitening_preserves_the_verdict(rng):
    n, mS, mZ = 300, 4, 120
    Z = rng.standard_normal((n, mZ)) @ np.diag(np.logspace(0, -6, mZ)) + 3.0      # correlated, ill-conditioned
    S = 1 / (1 + np.exp(-Z @ rng.standard_normal((mZ, mS)) / 30))
    a, b = cert(L.KhatriRao(S, Z), whiten=True), cert(L.KhatriRao(S, Z), whiten=False)
    assert a.status == FULL and b.status in (FULL, INC)
    assert a.details["whiten_S"]["whitening"] != "off" and b.details["whiten_S"]["whitening"] == "off"
    Si = np.round(S * 16) / 16
    Zi = np.round(Z * 8) / 8
    Si[200] = Si[10] + Si[20]
    Zi[10] = Zi[20] = Zi[200]
    assert cert(L.KhatriRao(Si, Zi), whiten=True).status == DEF
    assert cert(L.KhatriRao(Si, Zi), whiten=False).status == DEF


# ---------------------------------------------------------------- activated features
def test_activated_features_families(rng):
    n, m = 150, 60
    Z, W, b = rng.standard_normal((n, m)), rng.standard_normal((m, 170)) / np.sqrt(m), 0.1 * rng.standard_normal(170)
    c = cert(L.ActivatedFeatures(Z, W, b, "softplus"))
    H = L.ActivatedFeatures(Z, W, b, "softplus").to_dense()
    assert c.status == FULL and c.sigma_min_lower <= np.linalg.svd(H, compute_uv=False)[-1]
    Z2 = Z.copy()
    Z2[99] = Z2[5]                                                    # identical inputs ⇒ identical rows
    c = cert(L.ActivatedFeatures(Z2, W, b, "softplus"))
    assert c.status == DEF and c.details["identical_rows"][0] == [5, 99]
    c = cert(L.ActivatedFeatures(Z, W[:, :100], b[:100], "tanh"))   # width 101 < n = 150
    assert c.status == DEF and "n = 150 rows > D = 101" in c.reason


# ---------------------------------------------------------------- input handling
def test_bad_inputs_raise_named_errors(rng):
    A = rng.standard_normal((40, 60))
    B = A.copy()
    B[33, 7] = np.nan
    with pytest.raises(ValueError, match=r"rows .* contains NaN \(first at row 33, column 7\)"):
        cert(B)
    S, Z = rng.random((40, 2)), rng.standard_normal((40, 30))
    Z[3, 3] = np.inf
    with pytest.raises(ValueError, match="KhatriRao: Z .*Inf"):
        cert(L.KhatriRao(S, Z))
    with pytest.raises(ValueError, match="empty"):
        cert(np.zeros((0, 5)))
    with pytest.raises(ValueError, match="2-D"):
        cert(np.zeros(5))
    with pytest.raises(ValueError, match="same number of rows"):
        L.KhatriRao(np.ones((3, 2)), np.ones((5, 2)))
    with pytest.raises(ValueError, match="method"):
        cert(A, method="magic")
    with pytest.raises(TypeError):
        cert(torch.zeros(3, 4, dtype=torch.complex64))


def test_n_greater_than_D_is_immediately_deficient():
    t = time.perf_counter()
    c = cert(np.ones((500, 20)))
    assert c.status == DEF and c.rank is None and "n = 500 rows > D = 20" in c.reason
    assert time.perf_counter() - t < 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs_are_upcast_and_stated(rng, dtype):
    A = torch.from_numpy(rng.standard_normal((60, 90))).to(dtype)
    c = cert(A)
    assert c.status == FULL
    assert c.precision.startswith("float64 (") and str(dtype).replace("torch.", "") in c.precision
    c64 = cert(A.to(torch.float64))
    assert c64.sigma_min_lower == c.sigma_min_lower                     # the exact upcast: same matrix


def test_json_round_trip_and_string_status(rng):
    c = cert(rng.standard_normal((30, 50)))
    s = c.to_json()
    d = json.loads(s)
    assert d["status"] == "CERTIFIED_FULL_RANK" and isinstance(d["methods"], list)
    c2 = L.RankCertificate.from_json(s)
    assert c2.status == "CERTIFIED_FULL_RANK" and c2.status is L.CertificateStatus.CERTIFIED_FULL_RANK
    assert c2.to_dict() == c.to_dict()
    assert L.RankCertificate.from_dict(c.to_dict()).comparable() == c.comparable()
    assert set(c.timings) >= {"prepass", "gram_cholesky", "total"} and c.peak_memory_bytes >= 0
    with pytest.raises(TypeError):
        bool(c)
    with pytest.raises(ValueError, match="unknown fields"):
        L.RankCertificate.from_dict({**c.to_dict(), "bogus": 1})


# ---------------------------------------------------------------- memory plans
def test_infeasible_budget_fails_before_work(rng):
    A = rng.standard_normal((3000, 3100))
    reads = []
    src = L.RowBlocks(lambda s, e: reads.append(s) or A[s:e], n=3000, D=3100)
    with pytest.raises(L.MemoryBudgetError, match=r"needs at least .* MiB"):
        cert(src, memory_budget="200kB")
    assert reads == []                                       # no row was read: it failed before any work


def test_disk_plan_and_ram_plan_agree(rng, tmp_path):
    from gconv.linalg.plan import _gram_components
    A = rng.standard_normal((1200, 1300))
    need = {st: sum(_gram_components(L.DenseMatrix(A), 1200, 1300, 128, st, 64, None).values())
            for st in ("ram", "disk")}
    budget = (need["ram"] + need["disk"]) // 2
    ram = cert(A, block_size=128)
    disk = cert(A, block_size=128, memory_budget=budget, checkpoint_dir=str(tmp_path / "ck"))
    assert ram.details["plan"]["storage"] == "ram" and disk.details["plan"]["storage"] == "disk"
    assert disk.comparable() == ram.comparable()
    other = rng.standard_normal((1200, 1300))
    with pytest.raises(ValueError, match="different problem"):
        cert(other, block_size=128, memory_budget=budget, checkpoint_dir=str(tmp_path / "ck"))


_BUDGET_SCRIPT = r"""
import json, sys, numpy as np, gconv.linalg as L
n, D, budget = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
A = np.random.default_rng(0).standard_normal((n, D))
c = L.certify_full_row_rank(A, memory_budget=budget, progress=False, tighten_margin=False)
print(json.dumps({"status": c.status.value, "peak": c.peak_memory_bytes, "plan": c.details["plan"]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("n,budget,storage", [(1600, "48MiB", "ram"), (3000, "48MiB", "disk")])
def test_memory_budget_is_respected(tmp_path, n, budget, storage):
    from gconv._utils import parse_bytes
    p = tmp_path / "b.py"
    p.write_text(_BUDGET_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.getcwd(), TMPDIR=str(tmp_path))
    out = subprocess.run([sys.executable, str(p), str(n), str(n + 100), budget], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["status"] == FULL and r["plan"]["storage"] == storage
    assert r["peak"] <= 1.10 * parse_bytes(budget), r
    assert r["plan"]["estimate"] <= parse_bytes(budget)
