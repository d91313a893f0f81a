"""Typed, JSON-serialisable results: :class:`RankCertificate` and :class:`ColumnSpaceResult`.

``status`` fields are ``str``-valued enums, so ``cert.status == "CERTIFIED_FULL_RANK"`` works, and
they serialise as their string value.
"""
from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any

from gconv._utils import from_json_float, to_jsonable


class CertificateStatus(str, enum.Enum):
    CERTIFIED_FULL_RANK = "CERTIFIED_FULL_RANK"
    CERTIFIED_RANK_DEFICIENT = "CERTIFIED_RANK_DEFICIENT"
    INCONCLUSIVE = "INCONCLUSIVE"

    def __str__(self):
        return self.value


class ColumnSpaceStatus(str, enum.Enum):
    IN_COLUMN_SPACE = "IN_COLUMN_SPACE"
    NOT_IN_COLUMN_SPACE = "NOT_IN_COLUMN_SPACE"
    INCONCLUSIVE = "INCONCLUSIVE"

    def __str__(self):
        return self.value


def _floats_back(d):
    if isinstance(d, dict):
        return {k: _floats_back(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_floats_back(v) for v in d]
    return from_json_float(d)


@dataclasses.dataclass
class MethodStep:
    """One step of the method chain: its name, its outcome and the numbers behind it."""
    method: str
    outcome: str
    details: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RankCertificate:
    """The verdict of :func:`gconv.linalg.certify_full_row_rank` (or ``certify_positive_definite``).

    * ``CERTIFIED_FULL_RANK`` — a floating-point proof that the matrix defined by the stored data has
      rank n (for ``certify_positive_definite``: that the symmetric matrix is positive definite);
      ``sigma_min_lower`` > 0 is a rigorous lower bound on its smallest singular value
      (``lambda_min_lower`` on the smallest eigenvalue for a positive-definiteness certificate).
    * ``CERTIFIED_RANK_DEFICIENT`` — a proof that rank < n (``details`` names it: D < n, a zero row,
      two identical rows, or an exact linear dependency verified in rational arithmetic).
    * ``INCONCLUSIVE`` — neither could be proven; ``reason`` and ``details`` give the numbers.
    """
    status: CertificateStatus
    n: int
    D: int
    rank: int | None = None
    sigma_min_lower: float | None = None
    sigma_max_upper: float | None = None
    methods: list = dataclasses.field(default_factory=list)
    precision: str = "float64"
    peak_memory_bytes: int | None = None
    timings: dict = dataclasses.field(default_factory=dict)
    reason: str = ""
    details: dict = dataclasses.field(default_factory=dict)
    lambda_min_lower: float | None = None
    lambda_max_upper: float | None = None

    def __post_init__(self):
        self.status = CertificateStatus(self.status)
        self.methods = [m if isinstance(m, MethodStep) else MethodStep(**m) for m in self.methods]

    @property
    def certified_full_rank(self) -> bool:
        return self.status == CertificateStatus.CERTIFIED_FULL_RANK

    @property
    def certified_rank_deficient(self) -> bool:
        return self.status == CertificateStatus.CERTIFIED_RANK_DEFICIENT

    @property
    def certified_positive_definite(self) -> bool:
        return self.certified_full_rank and bool(self.details.get("positive_definite", False))

    def __bool__(self):
        raise TypeError("a RankCertificate has three outcomes; test .certified_full_rank or .status")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        return to_jsonable(self)

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kw)

    @classmethod
    def from_dict(cls, d: dict) -> "RankCertificate":
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"RankCertificate.from_dict: unknown fields {sorted(unknown)}")
        for k in ("sigma_min_lower", "sigma_max_upper", "lambda_min_lower", "lambda_max_upper"):
            d[k] = from_json_float(d.get(k))
        d["timings"] = _floats_back(d.get("timings", {}))
        d["details"] = _floats_back(d.get("details", {}))
        d["methods"] = [MethodStep(**_floats_back(m)) for m in d.get("methods", [])]
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> "RankCertificate":
        return cls.from_dict(json.loads(s))

    _RUN_KEYS = frozenset({"timings", "peak_memory_bytes", "seconds", "engine_seconds", "resumed_from_column",
                           "from_checkpoint", "plan", "checkpoint_dir", "cuda_peak_memory_bytes", "storage"})

    def comparable(self) -> dict:
        """``to_dict()`` without the run-dependent fields (timings, memory, plan, resume bookkeeping):
        two runs on the same problem — e.g. one resumed after a kill — give equal ``comparable()``."""
        def strip(x):
            if isinstance(x, dict):
                return {k: strip(v) for k, v in x.items() if k not in self._RUN_KEYS}
            if isinstance(x, list):
                return [strip(v) for v in x]
            return x
        return strip(self.to_dict())

    def summary(self) -> str:
        s = f"{self.status.value}: n={self.n}, D={self.D}"
        if self.rank is not None:
            s += f", rank={self.rank}"
        if self.sigma_min_lower is not None:
            s += f", sigma_min >= {self.sigma_min_lower:.3e}"
        if self.sigma_max_upper is not None:
            s += f", sigma_max <= {self.sigma_max_upper:.3e}"
        return s + (f" — {self.reason}" if self.reason else "")

    def __repr__(self):
        return f"RankCertificate({self.summary()})"


@dataclasses.dataclass
class ColumnSpaceResult:
    """The verdict of :func:`gconv.linalg.in_column_space` on ``y ∈ Col(A)``.

    ``residual_norm`` is ‖y − A x‖ for the computed coefficients x; ``residual_bound`` a rigorous upper
    bound on dist(y, Col A) where the operator allows one (dense or gconv implicit matrices);
    ``distance_lower`` a rigorous lower bound (only with a certified full-column-rank A).
    ``certified`` says whether ``status`` rests on a proof; ``numerical_status`` is the
    tolerance-based answer (like ``lsqr``'s) that is always available.
    """
    status: ColumnSpaceStatus
    residual_norm: float | None = None
    residual_bound: float | None = None
    distance_lower: float | None = None
    y_norm: float | None = None
    relative_residual: float | None = None
    numerical_status: str | None = None
    certified: bool = False
    method: str = ""
    reason: str = ""
    details: dict = dataclasses.field(default_factory=dict)
    coefficients: Any = None

    def __post_init__(self):
        self.status = ColumnSpaceStatus(self.status)

    @property
    def in_column_space(self) -> bool:
        return self.status == ColumnSpaceStatus.IN_COLUMN_SPACE

    def __bool__(self):
        raise TypeError("a ColumnSpaceResult has three outcomes; test .in_column_space or .status")

    def to_dict(self) -> dict:
        d = to_jsonable(dataclasses.replace(self, coefficients=None))
        d.pop("coefficients", None)
        return d

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kw)

    @classmethod
    def from_dict(cls, d: dict) -> "ColumnSpaceResult":
        d = {k: _floats_back(v) for k, v in d.items()}
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> "ColumnSpaceResult":
        return cls.from_dict(json.loads(s))
