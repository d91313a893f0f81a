"""``certify_full_row_rank`` — does the n × D matrix have rank n?  A proof, a disproof, or the numbers.

Method chain (each step recorded in ``RankCertificate.methods``):

1. **shape** — n > D ⇒ ``CERTIFIED_RANK_DEFICIENT`` at once.
2. **exact checks** (one pass): NaN/Inf (an error naming the row block), zero rows and identical rows
   (⇒ ``CERTIFIED_RANK_DEFICIENT``), exact power-of-two row scaling, norms, a fingerprint.
3. **Gram + certified Cholesky** (:mod:`gconv.linalg.cholesky`): G̃_s = fl(A_s A_sᵀ) (for Khatri–Rao
   (XXᵀ)∘(YYᵀ) of the whitened factors) factored in packed block columns with the shift
   c = shift_factor·(ρ + ε_form + w²); success ⇒ λ_min ≥ c − ρ(Ã) − ε_form > w² ⇒ ``CERTIFIED_FULL_RANK``.
   A breakdown yields a candidate null vector: an exact rational dependency (verified in integer
   arithmetic) ⇒ ``CERTIFIED_RANK_DEFICIENT``; otherwise a rigorous upper bound on σ_min.
4. **QR route** (:mod:`gconv.linalg.qr`) when the Gram route is inconclusive and the matrix fits the
   memory budget: does not square the condition number.
5. Otherwise ``INCONCLUSIVE`` with the numbers.

On a CUDA device (or with ``method="dense"``) steps 3–4 are the dense device route of
:mod:`gconv.linalg.gpu`: the whole Gram in device memory, an in-place Cholesky verified a posteriori,
and the device QR route on breakdown.
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from fractions import Fraction

import numpy as np

from gconv._utils import Timings, format_bytes, progress as _progress
from gconv.linalg import _fp
from gconv.linalg._blas import quiet_other_pools
from gconv.linalg.certificate import CertificateStatus, MethodStep, RankCertificate
from gconv.linalg.checkpoint import CheckpointDir
from gconv.linalg.cholesky import (FactorCheckpoint, factor_flops, left_looking_cholesky, min_eig_estimate,
                                   null_vector_candidate, rump_rho, rump_rho_prior, total_flops)
from gconv.linalg.deficiency import find_exact_dependency, refit_null_vector, sigma_min_upper
from gconv.linalg.gram import KhatriRaoGram, RowStore, RowsGram, khatri_rao_prepass, row_prepass
from gconv.linalg.implicit import ActivatedFeatures, ImplicitMatrix, KhatriRao, RowBlocks, as_implicit
from gconv.linalg.plan import PeakMemory, make_plan, resolve_device
from gconv.linalg.qr import qr_route, qr_route_bytes
from gconv.linalg.storage import PackedLower

_METHODS = ("auto", "gram", "qr", "dense")


def _precision(src: ImplicitMatrix) -> str:
    sd = src.source_dtype
    if all(part == "float64" for part in sd.split("/")):
        return "float64"
    low = any(p in sd for p in ("float16", "bfloat16"))
    return f"float64 ({sd} inputs upcast exactly{'; low-precision inputs' if low else ''})"


def _fmt(x) -> str:
    return f"{float(x):.3e}" if x is not None else "n/a"


def certify_full_row_rank(A, *, memory_budget=None, device=None, checkpoint_dir=None, progress=True,
                          method: str = "auto", whiten: bool = True, block_size: int | None = None,
                          shift_factor: float = 2.0, retry: bool = True, find_dependency: bool = True,
                          tighten_margin: bool | None = None) -> RankCertificate:
    """Certify that the n × D matrix ``A`` (n ≤ D) has full row rank n — with a floating-point proof.

    Parameters
    ----------
    A : torch tensor or numpy array (any real dtype), :class:`KhatriRao`, :class:`ActivatedFeatures`,
        :class:`RowBlocks`, or anything with ``row_blocks()`` / ``matvec``+``rmatvec`` and ``.shape``.
    memory_budget : bytes or a string ('16GiB'): the most memory this call may add.  The plan (packed
        storage in RAM or on disk, block size) is chosen from it and the free memory; an infeasible
        budget raises :class:`MemoryBudgetError` before any work, naming the amount needed.
    device : None (the input's device, else CPU), "cpu" or "cuda".
    checkpoint_dir : a directory for finished block columns; rerunning after a kill resumes there and
        returns the identical certificate (a finished directory returns its certificate at once).
    progress : show progress bars (tqdm).
    method : "auto" (Gram route, then the QR route when memory allows), "gram", "qr", or "dense" (the
        whole Gram in device memory — the GPU route; the default on CUDA).
    whiten : whiten Khatri–Rao factors by exact triangular transforms (design notes §3(b)).
    shift_factor : the Cholesky shift is shift_factor·ρ + ε + w² (ρ the a-priori rounding bound, ε the
        Gram formation error, w the whitening error); the surplus becomes the certified margin.  On a breakdown the minimal shift is retried once
        when the breakdown pivot leaves room for it (``retry``).
    tighten_margin : after a certificate, factor once more with a shift near λ_min/2 (estimated by
        inverse iteration) for a much sharper σ_min lower bound; None = only for n ≤ 8192.

    Returns
    -------
    RankCertificate — see its docstring; ``status`` is one of "CERTIFIED_FULL_RANK",
    "CERTIFIED_RANK_DEFICIENT", "INCONCLUSIVE".  Theorems and constants: docs/certification.md.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if not (isinstance(shift_factor, (int, float)) and shift_factor > 1.0 and math.isfinite(shift_factor)):
        raise ValueError(f"shift_factor must be a finite number > 1, got {shift_factor!r}")
    timings = Timings()
    steps: list[MethodStep] = []
    t_start = time.perf_counter()
    with timings.section("setup"):
        src = as_implicit(A)
        n, D = src.shape
        if n == 0 or D == 0:
            raise ValueError(f"certify_full_row_rank: the matrix is empty (shape {n} × {D})")
    dev = resolve_device(device, src)
    pm = PeakMemory(device=dev)
    with pm, quiet_other_pools():
        cert = _certify(src, n, D, dev, memory_budget, checkpoint_dir, progress, method, whiten, block_size,
                        shift_factor, retry, find_dependency, timings, steps, tighten_margin)
    cert.timings = {k: round(v, 6) for k, v in timings.items()}
    cert.timings["total"] = round(time.perf_counter() - t_start, 6)
    if cert.peak_memory_bytes is None:
        cert.peak_memory_bytes = int(pm.peak)
    if getattr(pm, "cuda_peak", None) is not None:
        cert.details["cuda_peak_memory_bytes"] = int(pm.cuda_peak)
    if checkpoint_dir is not None and not cert.details.get("from_checkpoint"):
        CheckpointDir(checkpoint_dir).save_json("certificate.json", cert.to_dict())
    return cert


def _cert(status, n, D, steps, precision, reason, **kw) -> RankCertificate:
    return RankCertificate(status=status, n=n, D=D, methods=list(steps), precision=precision, reason=reason, **kw)


def _certify(src, n, D, dev, memory_budget, checkpoint_dir, progress, method, whiten, block_size, shift_factor,
             retry, find_dependency, timings, steps, tighten_margin=None) -> RankCertificate:
    precision = _precision(src)
    details: dict = {"kind": src.kind}
    if n > D:
        steps.append(MethodStep("shape", "rank_deficient", {"n": n, "D": D}))
        return _cert(CertificateStatus.CERTIFIED_RANK_DEFICIENT, n, D, steps, precision,
                     f"n = {n} rows > D = {D} columns: rank ≤ D < n", details=dict(details, rank_upper_bound=D))
    steps.append(MethodStep("shape", "ok", {"n": n, "D": D}))

    if dev.startswith("cuda") or method == "dense":
        from gconv.linalg.gpu import certify_dense_device
        if method not in ("auto", "dense"):
            raise ValueError(f"method={method!r} is not available on {dev}; the device route is method='dense'")
        if checkpoint_dir is not None:
            details["checkpoint_dir_note"] = "the dense device route does not checkpoint (one factorisation)"

        def verdict(stats, det, base):
            return _exact_verdict(stats, n, D, steps, precision, det, base)
        return certify_dense_device(src, n, D, dev, memory_budget=memory_budget, progress=progress, whiten=whiten,
                                    shift_factor=shift_factor, timings=timings, steps=steps, precision=precision,
                                    exact_verdict=verdict, tighten_margin=tighten_margin)

    # ---------------------------------------------------------------- plan (before any work)
    ck = CheckpointDir(checkpoint_dir) if checkpoint_dir is not None else None
    if ck is not None and ck.block is not None:
        block_size = int(ck.block)
    plan = make_plan(src, memory_budget=memory_budget, device=dev, checkpoint_dir=checkpoint_dir,
                     block_size=block_size, block_multiple=getattr(src, "block_rows", 1)
                     if isinstance(src, ActivatedFeatures) else 1)
    details["plan"] = plan.to_dict()
    tmpdirs = []
    try:
        # ------------------------------------------------------------ materialise one-shot row sources
        if isinstance(src, RowBlocks) and src.needs_materialisation:
            with timings.section("materialise"):
                sdir = None
                if plan.materialise == "disk":
                    sdir = tempfile.mkdtemp(prefix="gconv-rows-", dir=checkpoint_dir)
                    tmpdirs.append(sdir)
                src.materialise(RowStore(n, D, directory=sdir))
            steps.append(MethodStep("materialise_rows", plan.materialise or "ram", {}))
        # ------------------------------------------------------------ exact checks (pre-pass)
        with timings.section("prepass"):
            if isinstance(src, KhatriRao):
                stats = khatri_rao_prepass(src)
            else:
                bar = _progress(total=n, desc="certify: exact checks", enabled=progress, unit="row")
                try:
                    stats = row_prepass(src, bar=bar, what=getattr(src, "name", "row block"))
                finally:
                    bar.close()
        sigma_max_upper = _fp.sqrt_up(stats.frob_sq_up)
        base = dict(sigma_max_upper=sigma_max_upper)
        meta = {"fingerprint": stats.fingerprint, "n": n, "D": D, "kind": src.kind,
                "whiten": bool(whiten) if isinstance(src, KhatriRao) else None, "block": plan.block}
        resumed = False
        if ck is not None:
            resumed = ck.bind(meta)
            done = ck.load_json("certificate.json")
            if done is not None:
                cert = RankCertificate.from_dict(done)
                cert.details["from_checkpoint"] = True
                return cert
        v = _exact_verdict(stats, n, D, steps, precision, details, base)
        if v is not None:
            return v
        steps.append(MethodStep("exact_checks", "passed", {"fingerprint": stats.fingerprint}))

        gram_info = None
        if method in ("auto", "gram"):
            with timings.section("gram_cholesky"):
                res = _gram_route(src, stats, plan, ck, whiten, shift_factor, retry, progress, steps, details,
                                  tmpdirs, tighten_margin)
            if res["status"] == "certified":
                return _cert(CertificateStatus.CERTIFIED_FULL_RANK, n, D, steps, precision, res["reason"],
                             rank=n, sigma_min_lower=res["sigma_min_lower"],
                             details=dict(details, **res["details"]), **base)
            gram_info = res
            if res.get("w") is not None and find_dependency:
                with timings.section("dependency_search"):
                    dep = find_exact_dependency(src, res["v"], res["failed_column"], exps=res["exps"])
                if dep is not None:
                    steps.append(MethodStep("exact_dependency", "verified", dep))
                    return _cert(CertificateStatus.CERTIFIED_RANK_DEFICIENT, n, D, steps, precision,
                                 f"exact linear dependency verified in rational arithmetic: {dep['statement']}",
                                 details=dict(details, dependency=dep, rank_upper_bound=n - 1,
                                              **res["details"]), **base)
                steps.append(MethodStep("exact_dependency", "none_found",
                                        {"candidate_support": int(np.count_nonzero(res["w"]))}))
        # ------------------------------------------------------------ QR route
        qr_info = None
        if method in ("auto", "qr"):
            need = qr_route_bytes(n, D)
            limit = plan.limit
            if need <= limit:
                with timings.section("qr_route"):
                    qr_info = qr_route(src, stats, progress=progress)
                    nv = qr_info.pop("null_vector", None)
                    if not qr_info.get("certified") and nv is not None:
                        _sigma_upper_into(src, stats, nv, gram_info, qr_info)
                steps.append(MethodStep("qr_preconditioned_gram", "certified" if qr_info.get("certified")
                                        else "inconclusive", {k: v for k, v in qr_info.items()
                                                              if k not in ("certified",)}))
                if qr_info.get("certified"):
                    reason = (f"QR route: Householder-preconditioned Gram certified ({qr_info['how']}); "
                              f"σ_min ≥ {qr_info['sigma_min_lower']:.3e}")
                    return _cert(CertificateStatus.CERTIFIED_FULL_RANK, n, D, steps, precision, reason, rank=n,
                                 sigma_min_lower=qr_info["sigma_min_lower"],
                                 details=dict(details, qr=qr_info, **(gram_info or {}).get("details", {})), **base)
            else:
                steps.append(MethodStep("qr_preconditioned_gram", "skipped",
                                        {"needs_bytes": need, "limit_bytes": limit}))
        # ------------------------------------------------------------ inconclusive
        reason = []
        det = dict(details)
        if gram_info is not None:
            reason.append(gram_info["reason"])
            det.update(gram_info["details"])
            if det.get("sigma_min_upper_from") == "qr_inverse_iteration":
                reason.append(f"σ_min ≤ {det['sigma_min_upper']:.3e} (rigorous, from the QR factor's smallest "
                              f"singular direction; σ_min/σ_max ≤ {det['sigma_min_upper_relative']:.1e})")
        if qr_info is not None and not qr_info.get("certified"):
            reason.append("QR route: " + qr_info.get("reason", "not certified"))
            det["qr"] = qr_info
        elif method in ("auto", "qr") and qr_info is None:
            reason.append(f"the QR route (which does not square the condition number) needs "
                          f"{format_bytes(qr_route_bytes(n, D))}, over the plan's limit {format_bytes(plan.limit)}")
        return _cert(CertificateStatus.INCONCLUSIVE, n, D, steps, precision, "; ".join(reason), details=det,
                     **base)
    finally:
        for d in tmpdirs:
            shutil.rmtree(d, ignore_errors=True)


def _exact_verdict(stats, n, D, steps, precision, details, base):
    """CERTIFIED_RANK_DEFICIENT from the pre-pass (zero rows, rows equal up to ±2^k), else None."""
    if stats.zero_rows:
        i = stats.zero_rows[0]
        steps.append(MethodStep("exact_checks", "zero_row", {"rows": stats.zero_rows[:20]}))
        return _cert(CertificateStatus.CERTIFIED_RANK_DEFICIENT, n, D, steps, precision,
                     f"row {i} is exactly zero ({len(stats.zero_rows)} zero row(s)): rank ≤ "
                     f"{n - len(stats.zero_rows)} < n", details=dict(details, zero_rows=stats.zero_rows[:100],
                                                                  rank_upper_bound=n - len(stats.zero_rows)),
                     **base)
    if stats.duplicates:
        i, j, f = stats.duplicates[0]
        ndup = len({p[1] for p in stats.duplicates})
        ident = [[p[0], p[1]] for p in stats.duplicates if p[2] == "1"]
        prop = [[p[0], p[1], p[2]] for p in stats.duplicates if p[2] != "1"]
        steps.append(MethodStep("exact_checks", "identical_rows" if ident else "proportional_rows",
                                {"pairs": [list(p) for p in stats.duplicates[:20]]}))
        what = (f"rows {i} and {j} are identical" if f == "1" else
                f"row {j} = ({f})·row {i} exactly (a power-of-two multiple)")
        return _cert(CertificateStatus.CERTIFIED_RANK_DEFICIENT, n, D, steps, precision,
                     f"{what} ({ndup} repeated row(s)): rank ≤ {n - ndup} < n",
                     details=dict(details, identical_rows=ident[:100], proportional_rows=prop[:100],
                                  rank_upper_bound=n - ndup), **base)
    return None


def _sigma_upper_into(src, stats, w, gram_info, qr_info):
    """Rigorous σ_min upper bound from the QR route's inverse-iteration vector; keep the smaller one."""
    try:
        ub, est = sigma_min_upper(src, w)
    except Exception as exc:  # diagnostics only
        qr_info["sigma_min_upper_error"] = repr(exc)
        return
    if ub is None:
        return
    qr_info["sigma_min_upper"] = _fp.round_up(ub)
    if gram_info is not None:
        old = gram_info["details"].get("sigma_min_upper")
        if old is None or _fp.round_up(ub) < old:
            smax = _fp.sqrt_up(stats.frob_sq_up)
            gram_info["details"].update(sigma_min_upper=_fp.round_up(ub), sigma_min_estimate=est,
                                        sigma_min_upper_relative=_fp.round_up(ub / _fp.fr(smax)) if smax else None,
                                        sigma_min_upper_from="qr_inverse_iteration")


def _engine(src, stats, whiten, ck, plan):
    if isinstance(src, KhatriRao):
        saved = None
        if ck is not None:
            arrs = ck.load_arrays("engine.npz")
            if arrs is not None:
                saved = {"B": arrs.get("B"), "C": arrs.get("C"), "ex": arrs["ex"], "ey": arrs["ey"],
                         "details": (ck.load_json("engine.json") or {})}
        eng = KhatriRaoGram(src, whiten=whiten, saved=saved, chunk_rows=plan.chunk_rows)
        if ck is not None and saved is None:
            st = eng.saved_state()
            ck.save_arrays("engine.npz", {k: st[k] for k in ("B", "C", "ex", "ey")})
            ck.save_json("engine.json", st["details"])
        return eng
    return RowsGram(src, stats, chunk_rows=plan.chunk_rows)


def _tighten(store, eng, c, plan, progress):
    """A second factorisation with a shift near λ_min/2 (estimated by inverse iteration with the first
    factor): a much larger certified margin.  Returns (λ lower bound or None, shift, outcome)."""
    est = min_eig_estimate(store)
    c2 = _fp.round_up(0.5 * (c + est))
    if not c2 > 4 * c:
        return None, c2, "skipped (the first margin is already near the estimate)"
    n, b = store.n, store.block
    store.release_all()         # the first factor is no longer needed: reuse its memory
    store2 = PackedLower(n, b, backend=plan.storage, directory=store.directory, prefix="T")
    out = left_looking_cholesky(store2, lambda k: eng.panel(store2.start(k), store2.width(k)), c2)
    if not out.success:
        return None, c2, "failed (kept the first margin)"
    lam2 = _fp.fr(c2) - rump_rho(out.diag_tilde) - eng.eps_form
    return (lam2 if lam2 > 0 else None), c2, "improved"


def _gram_route(src, stats, plan, ck, whiten, shift_factor, retry, progress, steps, details, tmpdirs,
                tighten_margin=None) -> dict:
    n = src.n
    t0 = time.perf_counter()
    eng = _engine(src, stats, whiten, ck, plan)
    t_engine = time.perf_counter() - t0
    rho_prior = rump_rho_prior(eng.diag_up)
    c_need = rho_prior + eng.eps_form + eng.transfer * eng.transfer
    info = {"rho_prior": float(_fp.round_up(rho_prior)), "eps_form": float(_fp.round_up(eng.eps_form)),
            "whitening_error": float(_fp.round_up(eng.transfer)), "shift_needed": float(_fp.round_up(c_need)),
            "block": plan.block, "storage": plan.storage, "engine": eng.kind, "engine_seconds": round(t_engine, 3)}
    info.update(eng.details)
    b = plan.block
    # the surplus (shift_factor − 1)·ρ over the rounding bound is the certified margin; the known error
    # terms (Gram formation, whitening) are added once
    shifts = [_fp.round_up(_fp.fr(shift_factor) * rho_prior + eng.eps_form + eng.transfer * eng.transfer)]
    attempt = 0
    outcome = None
    while True:
        c = shifts[attempt]
        if ck is not None:
            old = ck.attempt_shift(attempt)
            if old is not None:
                c = old
            else:
                ck.set_attempt_shift(attempt, c)
        adir = ck.attempt_dir(attempt) if ck is not None else None
        if plan.storage == "disk" and adir is None:
            adir = tempfile.mkdtemp(prefix="gconv-packed-")
            tmpdirs.append(adir)
        store = PackedLower(n, b, backend=plan.storage, directory=adir)
        start, dtil = 0, None
        fc = FactorCheckpoint(adir, store) if ck is not None else None
        if fc is not None:
            start = fc.finished()
            if start:
                dtil = fc.load(start)
        flops = factor_flops(n, b, eng.flops_per_entry)
        tot = total_flops(n, b, eng.flops_per_entry)
        bar = _progress(total=round(tot / 1e9, 1), desc=f"certify: Gram+Cholesky (n={n})", enabled=progress,
                        unit="GFLOP")
        if hasattr(bar, "bar_format"):
            bar.bar_format = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} GFLOP [{elapsed}<{remaining}]"
        if start:
            bar.update(round(sum(flops(k) for k in range(start)) / 1e9, 1))
        try:
            outcome = left_looking_cholesky(store, lambda k: eng.panel(store.start(k), store.width(k)), c,
                                            start=start, diag_tilde=dtil, on_column=fc.save if fc else None,
                                            bar=bar, flops_fn=lambda k: round(flops(k) / 1e9, 1))
        finally:
            bar.close()
        step = {"shift": c, "attempt": attempt, "resumed_from_column": start * b if start else 0,
                "seconds": round(outcome.seconds, 3)}
        if outcome.success:
            rho = rump_rho(outcome.diag_tilde)
            lam = _fp.fr(c) - rho - eng.eps_form
            info.update(rho=float(_fp.round_up(rho)), shift=c, lambda_min_lower_scaled=float(_fp.round_down(lam)))
            if lam <= 0:
                steps.append(MethodStep("gram_cholesky", "factored_without_margin", dict(step, **info)))
                return {"status": "inconclusive", "details": info, "w": None, "failed_column": None,
                        "reason": f"the shifted Cholesky succeeded but its error bound ρ = {_fmt(rho)} + "
                                  f"{_fmt(eng.eps_form)} is not below the shift {c:.3e}"}
            sig_rows = _fp.fr(_fp.sqrt_down(lam))
            sig_t = sig_rows - eng.transfer
            if sig_t <= 0:
                steps.append(MethodStep("gram_cholesky", "margin_below_whitening_error", dict(step, **info)))
                return {"status": "inconclusive", "details": info, "w": None, "failed_column": None,
                        "reason": f"the margin √λ ≥ {_fmt(sig_rows)} does not exceed the whitening error "
                                  f"{_fmt(eng.transfer)}"}
            if not (tighten_margin is None and n <= 8192 or tighten_margin) and plan.storage == "ram":
                # no second factorisation: report an *estimate* of λ_min (inverse iteration with the factor)
                t_e = time.perf_counter()
                est = min_eig_estimate(store, iters=10)
                info.update(lambda_min_estimate_scaled=float(c + est), margin_estimate=float((c + est) / c),
                            estimate_seconds=round(time.perf_counter() - t_e, 3),
                            note="lambda_min_estimate_scaled and margin_estimate are estimates (inverse iteration), "
                                 "not bounds; the certified bound is lambda_min_lower_scaled")
            steps.append(MethodStep("gram_cholesky", "certified", dict(step, **info)))
            if tighten_margin is None and n <= 8192 or tighten_margin:
                lam2, c2, note = _tighten(store, eng, c, plan, progress)
                steps.append(MethodStep("margin_refinement", note, {"shift": c2, "lambda_min_lower_scaled":
                                                                    None if lam2 is None else _fp.round_down(lam2)}))
                if lam2 is not None and lam2 > lam:
                    lam, c = lam2, c2
                    info.update(shift=c, lambda_min_lower_scaled=float(_fp.round_down(lam)))
                    sig_t = _fp.fr(_fp.sqrt_down(lam)) - eng.transfer
            sig = _fp.round_down(sig_t * eng.sigma_scale)
            info["sigma_min_lower_scaled"] = _fp.round_down(sig_t)
            return {"status": "certified", "sigma_min_lower": sig, "details": info,
                    "reason": f"shifted Cholesky of the float64 Gram certified positive definite: λ_min ≥ "
                              f"{float(lam):.3e} > 0 after a shift of {c:.3e} covering the rounding bound "
                              f"ρ = {_fmt(rho)} and the Gram formation error {_fmt(eng.eps_form)}"
                              + (f" (whitening error {_fmt(eng.transfer)})" if eng.transfer else "")}
        j = outcome.failed_column
        step.update(failed_column=j, pivot=outcome.pivot)
        steps.append(MethodStep("gram_cholesky", "breakdown", dict(step, **info)))
        if (retry and attempt == 0 and outcome.pivot is not None and shift_factor > 1.05
                and c + outcome.pivot > 1.05 * float(c_need)):
            shifts.append(_fp.round_up(c_need * Fraction(65, 64)))
            attempt += 1
            continue
        break
    # breakdown: candidate null vector, rigorous σ_min upper bound
    info.update(failed_column=j, pivot=outcome.pivot, shift=c)
    w = None
    try:
        v = null_vector_candidate(store, outcome)
    except Exception as exc:  # diagnostics only
        v = None
        info["null_vector_error"] = repr(exc)
    reason = (f"Cholesky of the float64 Gram shifted by {c:.3e} (the rigorous rounding-error level) broke down "
              f"at row {j} (Schur pivot ≈ {outcome.pivot:.3e}): λ_min of the scaled Gram is at or below the "
              f"level float64 can certify" if outcome.pivot is not None else
              f"Cholesky of the shifted Gram broke down at row {j}")
    if v is not None and np.isfinite(v).all():
        # Σ v_i row_s,i ≈ 0 with row_s,i = 2^{e_i}·row'_i  ⇒  w_i = 2^{e_i} v_i on the original rows
        with np.errstate(over="ignore", under="ignore"):
            wv = np.ldexp(v, eng.exps[:j + 1] - int(eng.exps[:j + 1].max()))   # common 2^k does not matter
        w = np.zeros(n)
        w[:j + 1] = wv
        ub, est = None, None
        for cand in (w, refit_null_vector(src, w, j)):
            if cand is None:
                continue
            try:
                u_, e_ = sigma_min_upper(src, cand)
            except Exception as exc:  # diagnostics only
                info["sigma_min_upper_error"] = repr(exc)
                continue
            if u_ is not None and (ub is None or u_ < ub):
                ub, est = u_, e_
        if ub is not None:
            smax = _fp.sqrt_up(stats.frob_sq_up)
            info.update(sigma_min_upper=_fp.round_up(ub), sigma_min_estimate=est,
                        sigma_min_upper_relative=(_fp.round_up(ub / _fp.fr(smax)) if smax > 0 else None))
            reason += (f"; σ_min ≤ {float(ub):.3e} (rigorous, from the breakdown's null vector; "
                       f"σ_max ≤ {smax:.3e}, ratio ≤ {float(ub) / smax:.1e})")
    return {"status": "breakdown", "details": info, "w": w, "v": v, "exps": eng.exps, "failed_column": j,
            "reason": reason}
