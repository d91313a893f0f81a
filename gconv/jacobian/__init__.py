"""gconv.jacobian — J / Jᵀ operators, NTK blocks, the alignment condition, Q_T, the gradient-basis gap.

=============================  ====================================================================
``Jacobian``                   J = ∂vec(f_X(θ))/∂θ as an operator: mv, rmv, mm, rmm, row_blocks, to_scipy
``select_parameters``          the accepted forms of ``params=`` (all, "last", EEHead θ_(H−1), names, ...)
``ntk``, ``ntk_gram``          NTK blocks and streamed Grams K = J Jᵀ (three methods + a cost model)
``ntk_cost_model``             the estimates ``method="auto"`` chooses by
``gram_blocks``                stream the upper triangle of K without storing it
``lsqr``, ``lsmr``             matrix-free least squares in torch (SciPy's istop codes)
``alignment``                  seed 000, Definition 2: vec(Y_ℓ) ∈ Col(J)?  → ``AlignmentResult``
``check_alignment``            the same for a prepared Jacobian and target (used by QTracker)
``column_scaling``             the right preconditioners of the matrix-free alignment check
``QTracker``                   Q_T of eq. 2.5 along a training run (a plain callable / callback)
``representation_change``      ‖M(θ^T) − M(θ^0)‖_F², M = J Jᵀ (seed 000, Table 1), streamed
``gradient_basis_gap``         seed 001, Theorem 1: L(θ) − inf_α L_θ(α), with its evidence
=============================  ====================================================================

See docs/jacobian.md.
"""
from gconv.jacobian._functional import select_parameters
from gconv.jacobian.operator import Jacobian
from gconv.jacobian.ntk import gram_blocks, ntk, ntk_cost_model, ntk_gram
from gconv.jacobian.solvers import LstsqResult, lsmr, lsqr
from gconv.jacobian.alignment import AlignmentResult, alignment, check_alignment, column_scaling
from gconv.jacobian.tracking import QTracker, QTrackerSummary, RepresentationChange, representation_change
from gconv.jacobian.gradient_basis import GradientBasisGap, gradient_basis_gap

__all__ = ["Jacobian", "select_parameters", "ntk", "ntk_gram", "ntk_cost_model", "gram_blocks", "lsqr", "lsmr",
           "LstsqResult", "AlignmentResult", "alignment", "check_alignment", "column_scaling", "QTracker",
           "QTrackerSummary", "RepresentationChange", "representation_change", "GradientBasisGap",
           "gradient_basis_gap"]
