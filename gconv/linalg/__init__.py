"""gconv.linalg — implicit matrices and *certified* rank (issue 3; docs/certification.md).

Implicit matrices (never materialised)::

    KhatriRao(S, Z)                                   row i = s_i ⊗ z_i   (seed 000, φ of Assumption 4)
    ActivatedFeatures(Z, W, b, activation)            row i = [act(z_i W + b), 1]  (seeds 002/003)
    RowBlocks(blocks_or_callable, n=None, D=None)     any source of row blocks

Certificates::

    certify_full_row_rank(A, memory_budget=None, device=None, checkpoint_dir=None, progress=True)
        -> RankCertificate  (CERTIFIED_FULL_RANK / CERTIFIED_RANK_DEFICIENT / INCONCLUSIVE)
    certify_positive_definite(G, extra_shift=0.0)     the Rump step on a given symmetric matrix
    matrix_rank(A, tol=None, rtol=None, hermitian=False)   numpy.linalg.matrix_rank semantics
    in_column_space(A, y)                             -> ColumnSpaceResult
"""
from gconv.linalg.certificate import (CertificateStatus, ColumnSpaceResult, ColumnSpaceStatus, MethodStep,
                                      RankCertificate)
from gconv.linalg.implicit import ActivatedFeatures, DenseMatrix, ImplicitMatrix, KhatriRao, RowBlocks, as_implicit
from gconv.linalg.plan import MemoryBudgetError
from gconv.linalg.rank import certify_full_row_rank
from gconv.linalg.positive_definite import certify_positive_definite
from gconv.linalg.matrix_rank import matrix_rank
from gconv.linalg.colspace import in_column_space

__all__ = [
    "KhatriRao", "ActivatedFeatures", "RowBlocks", "DenseMatrix", "ImplicitMatrix", "as_implicit",
    "certify_full_row_rank", "certify_positive_definite", "matrix_rank", "in_column_space",
    "RankCertificate", "CertificateStatus", "ColumnSpaceResult", "ColumnSpaceStatus", "MethodStep",
    "MemoryBudgetError",
]
