"""gconv.jacobian — J / Jᵀ operators, NTK blocks, the alignment condition, Q_T, the gradient-basis gap."""
from gconv.jacobian._functional import select_parameters
from gconv.jacobian.operator import Jacobian
from gconv.jacobian.ntk import ntk, ntk_gram, ntk_cost_model
from gconv.jacobian.solvers import lsqr, lsmr, LstsqResult
from gconv.jacobian.alignment import AlignmentResult, alignment, check_alignment, column_scaling

__all__ = ["Jacobian", "select_parameters", "ntk", "ntk_gram", "ntk_cost_model", "lsqr", "lsmr", "LstsqResult",
           "AlignmentResult", "alignment", "check_alignment", "column_scaling"]
from gconv.jacobian.tracking import QTracker, QTrackerSummary, RepresentationChange, representation_change
from gconv.jacobian.gradient_basis import GradientBasisGap, gradient_basis_gap

__all__ += ["QTracker", "QTrackerSummary", "RepresentationChange", "representation_change", "GradientBasisGap",
            "gradient_basis_gap"]
