"""gconv.verify — the papers' conditions, each as one call returning a :class:`VerificationReport`.

=================================  =====================================================================
``safe_exploration``               seed 000, Assumption 4 / Table 2: rank φ(q, θ) = n (Khatri–Rao)
``expressivity``                   seeds 002/003, Assumption 1 / Table 1: rank [h_X, 1_n] = n
``alignment``                      seed 000, Definition 2 / eq. 2.5: vec(Y_ℓ) ∈ Col(J(θ))
``ntk_rank_preserved``             seed 003, Algorithm 1 phase 2: rank K(w^k) ≥ rank K(w^τ)
``gram_positive_definite``         seed 004, Theorem 3: λ_min(Φ Φᵀ / D) > 0
``gradient_basis_gap``             seed 001, Theorem 1: L(θ) − inf_α L_θ(α) = 0
``extract_features``               stream data through a model, capture a named layer (forward hook)
``VerificationReport``, ``Verdict``  the typed, JSON round-trippable result; VERIFIED / NOT_VERIFIED /
                                   INCONCLUSIVE mapped from certificates only (docs/verify.md)
=================================  =====================================================================

Command line: ``gconv verify <condition> --data ... --model ...`` (gconv/verify/cli.py).
"""
from gconv.verify.report import VerificationReport, Verdict, plot_report
from gconv.verify.features import extract_features
from gconv.verify.safe_exploration import safe_exploration
from gconv.verify.expressivity import expressivity
from gconv.verify.alignment import alignment
from gconv.verify.ntk_rank import ntk_rank_preserved
from gconv.verify.gram_positive_definite import gram_positive_definite
from gconv.verify.gradient_basis import gradient_basis_gap

CONDITIONS = {
    "safe-exploration": safe_exploration,
    "expressivity": expressivity,
    "alignment": alignment,
    "ntk-rank": ntk_rank_preserved,
    "gram-pd": gram_positive_definite,
    "gradient-basis": gradient_basis_gap,
}

__all__ = ["VerificationReport", "Verdict", "plot_report", "extract_features", "safe_exploration", "expressivity",
           "alignment", "ntk_rank_preserved", "gram_positive_definite", "gradient_basis_gap", "CONDITIONS"]
