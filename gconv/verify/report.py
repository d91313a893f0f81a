"""The report every verifier returns: :class:`VerificationReport` (typed, strict-JSON round trip).

The verdict is mapped from the underlying certificate *honestly* (docs/verify.md):

* ``VERIFIED`` — only from a certified positive outcome (``CERTIFIED_FULL_RANK`` /
  positive definite from :mod:`gconv.linalg`, or the analogous exhibited witness of :mod:`gconv.jacobian`);
* ``NOT_VERIFIED`` — only from a proven negative (``CERTIFIED_RANK_DEFICIENT``, a certified distance);
* ``INCONCLUSIVE`` — everything else, with the numbers that were obtained.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import math

from gconv._utils import from_json_float, to_jsonable


class Verdict(str, enum.Enum):
    VERIFIED = "VERIFIED"
    NOT_VERIFIED = "NOT_VERIFIED"
    INCONCLUSIVE = "INCONCLUSIVE"

    def __str__(self):
        return self.value

    @property
    def exit_code(self) -> int:
        """The command-line exit code: 0 verified, 1 not verified or inconclusive."""
        return 0 if self is Verdict.VERIFIED else 1


def _floats_back(x):
    if isinstance(x, dict):
        return {k: _floats_back(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_floats_back(v) for v in x]
    return from_json_float(x)


@dataclasses.dataclass
class VerificationReport:
    """Outcome of one verifier.

    ``condition``      e.g. "safe_exploration";  ``paper`` / ``equation``: where the condition is stated.
    ``statement``      the condition in words (what VERIFIED asserts).
    ``inputs``         n, shapes, dtype, device, model and seed — what was checked.
    ``verdict``        :class:`Verdict`.
    ``margin``         the certified quantity that makes the verdict (e.g. a lower bound on σ_min), or None.
    ``margin_name``    what ``margin`` is.
    ``certificate``    the underlying gconv.linalg / gconv.jacobian result as a dict;
                       ``certificate_type`` its class name (``RankCertificate``, ``AlignmentResult``, ...).
    ``timings``        seconds per section (features / gram / factorisation / ...; ``total``).
    ``environment``    library versions and machine (gconv._utils.environment()).
    ``message``        one line: why this verdict.
    ``details``        anything else (numerical ranks, estimates, the spectrum for the plot, ...).
    """
    condition: str
    paper: str
    equation: str
    statement: str
    inputs: dict
    verdict: Verdict
    margin: float | None = None
    margin_name: str = ""
    certificate: dict | None = None
    certificate_type: str = ""
    timings: dict = dataclasses.field(default_factory=dict)
    environment: dict = dataclasses.field(default_factory=dict)
    message: str = ""
    details: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.verdict = Verdict(self.verdict)

    @property
    def verified(self) -> bool:
        return self.verdict is Verdict.VERIFIED

    def __bool__(self):
        raise TypeError("a VerificationReport has three outcomes; test .verified or .verdict")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        return to_jsonable(self)

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kw)

    @classmethod
    def from_dict(cls, d: dict) -> "VerificationReport":
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"VerificationReport.from_dict: unknown fields {sorted(unknown)}")
        missing = {"condition", "paper", "equation", "statement", "inputs", "verdict"} - set(d)
        if missing:
            raise ValueError(f"VerificationReport.from_dict: missing fields {sorted(missing)}")
        d["margin"] = from_json_float(d.get("margin"))
        for k in ("timings", "details", "certificate"):
            if d.get(k) is not None:
                d[k] = _floats_back(d[k])
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> "VerificationReport":
        return cls.from_dict(json.loads(s))

    def certificate_object(self):
        """The certificate as its own type again (RankCertificate, AlignmentResult, ...) where possible."""
        if self.certificate is None:
            return None
        if self.certificate_type == "RankCertificate":
            from gconv.linalg import RankCertificate
            return RankCertificate.from_dict(self.certificate)
        return self.certificate

    # ------------------------------------------------------------------ human summary
    def summary(self) -> str:
        """A few lines for people: verdict, margin, what was checked, the time split."""
        inp = self.inputs
        lines = [f"{self.condition} ({self.paper}, {self.equation}): {self.verdict.value}"]
        if self.margin is not None:
            lines.append(f"  margin: {self.margin_name} = {self.margin:.4g}")
        shape = inp.get("matrix_shape")
        what = ", ".join(f"{k}={inp[k]}" for k in ("n", "model", "seed", "dtype", "device") if k in inp)
        lines.append(f"  inputs: {what}" + (f", matrix {shape[0]} x {shape[1]}" if shape else ""))
        if self.message:
            lines.append(f"  {self.message}")
        if self.timings:
            total = self.timings.get("total")
            parts = ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items()
                              if k != "total" and isinstance(v, (int, float)) and math.isfinite(v))
            lines.append(f"  time: {parts}" + (f" (total {total:.2f} s)" if total is not None else ""))
        return "\n".join(lines)

    def __repr__(self):
        return f"VerificationReport({self.condition}: {self.verdict.value})"


def verdict_from_rank_certificate(cert) -> Verdict:
    """CERTIFIED_FULL_RANK → VERIFIED, CERTIFIED_RANK_DEFICIENT → NOT_VERIFIED, else INCONCLUSIVE."""
    if cert.certified_full_rank:
        return Verdict.VERIFIED
    if cert.certified_rank_deficient:
        return Verdict.NOT_VERIFIED
    return Verdict.INCONCLUSIVE


def plot_report(report: VerificationReport, path) -> str:
    """Write a figure for ``report``: the certified bounds (log scale) and, where the verifier kept one,
    the spectrum (``details["spectrum"]``: singular values / eigenvalues, largest first)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    spec = report.details.get("spectrum")
    bounds = {k: v for k, v in (report.details.get("bounds") or {}).items()
              if isinstance(v, (int, float)) and math.isfinite(v) and v > 0}
    ncols = 2 if spec else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 4), squeeze=False)
    ax = axes[0][0]
    if bounds:
        names = list(bounds)
        ax.barh(range(len(names)), [bounds[k] for k in names], color="tab:blue")
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("value (log scale)")
    else:
        ax.text(0.5, 0.5, "no certified bounds", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title(f"{report.condition}: {report.verdict.value}", fontsize=10)
    if spec:
        ax = axes[0][1]
        vals = [v for v in (from_json_float(x) for x in spec["values"]) if isinstance(v, (int, float))]
        ax.semilogy(range(1, len(vals) + 1), [max(v, 1e-300) for v in vals], ".", ms=2)
        for name, v in bounds.items():
            if name in spec.get("overlay", []):
                ax.axhline(v, ls="--", lw=1, color="tab:red", label=name)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.set_xlabel("index")
        ax.set_ylabel(spec.get("name", "spectrum"))
        ax.set_title(spec.get("title", "spectrum"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
