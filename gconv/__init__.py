"""gconv — training with global-convergence guarantees, made practical.

Public surface (one import away)::

    gconv.ops        fused functional ops: softplus, ee_head
    gconv.nn         drop-in modules: Softplus, EEHead, convert_activations
    gconv.linalg     implicit matrices and certified rank: certify_full_row_rank, matrix_rank, ...
    gconv.jacobian   J / Jᵀ operators, NTK blocks, alignment, QTracker, gradient_basis_gap
    gconv.verify     the papers' conditions as one call each
    gconv.train      EEWrapper (seed 000, Alg. 1) and TwoPhase (seed 003, Alg. 1)
    gconv.models     pre-activation ResNet-18 with softplus, LeNet, MLPs, P-3L
    gconv.data       IDX / NPZ loaders and built-in data sets (no downloads, ever)
    gconv.backends() which implementation each op uses on each device, and why
"""
import importlib

from gconv._version import __version__
from gconv._backends import backends

_SUBMODULES = ("ops", "nn", "linalg", "jacobian", "verify", "train", "models", "data", "cli")

__all__ = ["__version__", "backends", *_SUBMODULES]


def __getattr__(name):  # lazy submodules keep `import gconv` cheap
    if name in _SUBMODULES:
        mod = importlib.import_module(f"gconv.{name}")
        globals()[name] = mod
        return mod
    raise AttributeError(f"module 'gconv' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
