"""Seed 000, Definition 2 / eq. 2.5 (data–architecture alignment): vec(Y_ℓ) ∈ Col(J(θ)).

Y_ℓ = Y for the squared loss, 2Y − 1 for cross-entropy with one-hot Y.  The check is
:func:`gconv.jacobian.alignment` (routes "exact" → gconv.linalg.in_column_space on K = J Jᵀ, "gram",
"lsmr"/"lsqr"; docs/jacobian.md).  Membership is decided at a relative tolerance ``tol`` (exact
membership in the column space of a rank-deficient matrix is not decidable in floating point).

Verdict mapping:

* ALIGNED → ``VERIFIED``: a witness x with ‖Y_ℓ − J x‖ ≤ tol·‖Y_ℓ‖, recomputed on J (or certified by
  gconv.linalg on the "exact" route);
* NOT_ALIGNED *certified* by gconv.linalg → ``NOT_VERIFIED``;
* a NOT_ALIGNED verdict that is only numerical (the "gram" / "lsmr" routes, an estimate of the distance)
  → ``INCONCLUSIVE``, with ``details["numerical_verdict"] = "NOT_ALIGNED"``;
* INCONCLUSIVE → ``INCONCLUSIVE``.
"""
from __future__ import annotations

import time

import torch

from gconv._utils import environment, to_jsonable
from gconv.jacobian import alignment as _alignment
from gconv.verify._common import data_summary, model_on, progress_default
from gconv.verify.features import model_summary
from gconv.verify.report import VerificationReport, Verdict

PAPER = "seed 000 (Kawaguchi, Zhang, Deng)"
EQUATION = "Definition 2, eq. 2.5: vec(Y_l) in Col(J(theta))"
STATEMENT = "vec(Y_l) lies in the column space of the Jacobian J(theta) (within tol)"


def alignment(model, data, loss="cross_entropy", *, params=None, method: str = "auto", tol: float | None = None,
              seed: int | None = None, device=None, memory_budget=None, progress: bool | None = None,
              dense_max_entries: int = 20_000_000, **alignment_options) -> VerificationReport:
    """Verify seed 000's alignment condition at the model's current θ on ``data`` (with targets).

    ``loss``: "squared" | "cross_entropy" | ... (as :func:`gconv.jacobian.alignment`); ``params``: the
    Jacobian's columns (None: all trainable; "last"; names).  ``device``: run on a copy of the model
    there.  ``seed`` is recorded in the report (the model's own seed).  Other options go to
    :func:`gconv.jacobian.alignment`.  When that check is not certified and J has at most
    ``dense_max_entries`` entries, :func:`gconv.linalg.in_column_space` runs on J itself (float64),
    which proves a negative when J has certified full column rank.
    """
    t0 = time.perf_counter()
    progress = progress_default(progress)
    inputs = data_summary(data)
    model = model_on(model, device)
    res = _alignment(model, data, loss, params=params, method=method, tol=tol, memory_budget=memory_budget,
                     progress=progress, **alignment_options)
    if res.verdict == "ALIGNED":
        verdict = Verdict.VERIFIED
    elif res.verdict == "NOT_ALIGNED" and res.certified:
        verdict = Verdict.NOT_VERIFIED
    else:
        verdict = Verdict.INCONCLUSIVE
    ics = None
    N, d = res.n * res.m_y, res.d
    if verdict is Verdict.INCONCLUSIVE and 0 < N * d <= dense_max_entries:
        # K = J Jᵀ is rank deficient when J is tall, so its route cannot prove a negative; J itself can
        # (certified full column rank ⇒ a rigorous lower bound on dist(Y_ℓ, Col J))
        ics, cs_seconds = _dense_column_space(model, data, loss, params, res.tol, memory_budget)
        if ics.certified and ics.status.value == "NOT_IN_COLUMN_SPACE":
            verdict = Verdict.NOT_VERIFIED
        elif ics.certified and ics.status.value == "IN_COLUMN_SPACE":
            verdict = Verdict.VERIFIED
    inputs.update(model=model_summary(model), seed=seed, loss=res.loss, target_transform=res.target_transform,
                  params="all trainable" if params is None else str(params), dtype=res.dtype, device=res.device,
                  matrix_shape=[res.n * res.m_y, res.d], m_y=res.m_y)
    details = {"numerical_verdict": res.verdict, "certified": res.certified, "method": res.method,
               "bounds": {k: v for k, v in (("relative_residual", res.relative_residual), ("tol", res.tol),
                                            ("distance_lower_estimate", res.distance_lower_estimate))
                          if isinstance(v, float)}}
    margin, mname = None, ""
    if ics is not None and ics.certified:
        proof, on = to_jsonable(ics), "J"
        details["column_space_check"] = proof
        details["certified"] = True
    else:
        proof, on = (((res.certificate or {}).get("details") or {}) if res.certified else {}), "K"
        if ics is not None:
            details["column_space_check"] = to_jsonable(ics)
    ynorm = proof.get("y_norm") if isinstance(proof, dict) else None
    if isinstance(ynorm, float) and ynorm > 0:
        # the numbers of gconv.linalg.in_column_space's proof (Col K = Col J for K = J Jᵀ)
        if verdict is Verdict.VERIFIED and isinstance(proof.get("residual_bound"), float):
            margin, mname = proof["residual_bound"] / ynorm, f"certified bound on dist(Y_l, Col {on})/||Y_l|| (<= tol)"
        elif verdict is Verdict.NOT_VERIFIED and isinstance(proof.get("distance_lower"), float):
            margin, mname = proof["distance_lower"] / ynorm, f"certified lower bound on dist(Y_l, Col {on})/||Y_l|| (> tol)"
    elif verdict is Verdict.VERIFIED:
        margin, mname = res.relative_residual, "relative residual ||Y_l - J x|| / ||Y_l|| of the witness x (<= tol)"
    msg = f"{res.verdict}{' (certified)' if res.certified else ''} by the {res.method} route: {res.message}"
    if ics is not None:
        msg = (f"gconv.linalg.in_column_space(J, Y_l): {ics.status.value}"
               f"{' (certified)' if ics.certified else ''}: {ics.reason} — before that: " + msg)
    return VerificationReport(condition="alignment", paper=PAPER, equation=EQUATION, statement=STATEMENT,
                              inputs=inputs, verdict=verdict, margin=margin, margin_name=mname,
                              certificate=to_jsonable(res), certificate_type=type(res).__name__,
                              timings=dict({"jacobian_solve": res.seconds}, **({"column_space_J": cs_seconds} if ics is not None else {}),
                                           total=time.perf_counter() - t0),
                              environment=environment(), message=msg, details=details)


def _dense_column_space(model, data, loss, params, tol, memory_budget):
    from gconv.jacobian import Jacobian
    from gconv.jacobian.alignment import alignment_target, data_targets
    from gconv.linalg import in_column_space
    t = time.perf_counter()
    J = Jacobian(model, data, params, memory_budget=memory_budget)
    y = alignment_target(J, loss, data_targets(J)).to("cpu", torch.float64)
    Jd = J.dense(max_bytes=J.shape[0] * J.shape[1] * 8 + 1).to("cpu", torch.float64)
    ics = in_column_space(Jd, y, rtol=tol)
    return ics, time.perf_counter() - t
