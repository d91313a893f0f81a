"""Shared plumbing of the verifiers: inputs, summaries, budgets, reports."""
from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch
from torch import nn

from gconv._utils import environment, parse_bytes
from gconv.data.source import as_data_source
from gconv.verify.features import extract_features, model_summary
from gconv.verify.report import VerificationReport, Verdict, verdict_from_rank_certificate


def data_summary(data) -> dict:
    """n, per-sample input shape, dtype and (for gconv.data.Data) the data set's name/source."""
    src = as_data_source(data)
    out = {"n": src.n}
    first = src.slice(0, 1)
    out["input_shape"] = list(first.x.shape[1:])
    out["input_dtype"] = str(first.x.dtype).replace("torch.", "")
    meta = getattr(src, "meta", None)
    if isinstance(meta, dict):
        out["data"] = meta.get("source", meta.get("name"))
    return out


def features_of(model_or_features, data, *, layer, batch_size, train, device, memory_budget, progress,
                timings) -> tuple[torch.Tensor, dict]:
    """Z̄ (n × m float64, CPU) from a model + data (streamed) or given directly, and an input summary."""
    if isinstance(model_or_features, (torch.Tensor, np.ndarray)):
        Z = torch.as_tensor(model_or_features)
        if Z.dim() != 2:
            raise ValueError(f"features must be an (n, m) matrix, got shape {tuple(Z.shape)}")
        if not (Z.is_floating_point() or Z.dtype in (torch.int32, torch.int64, torch.uint8)):
            raise TypeError(f"features must be real numbers, got {Z.dtype}")
        from gconv._utils import check_finite
        check_finite(Z, "features")
        inputs = {"n": int(Z.shape[0]), "feature_shape": list(Z.shape), "dtype": str(Z.dtype).replace("torch.", ""),
                  "model": "features given", "device": str(Z.device)}
        return Z.detach().to("cpu", torch.float64), inputs
    if not isinstance(model_or_features, nn.Module):
        raise TypeError("pass an nn.Module (with data) or a feature matrix, got "
                        f"{type(model_or_features).__name__}")
    if data is None:
        raise ValueError("data is required with a model")
    model = model_or_features
    inputs = data_summary(data)
    Z = extract_features(model, data, layer=layer, batch_size=batch_size, train=train, device=device,
                         memory_budget=memory_budget, progress=progress, timings=timings)
    p0 = next(iter(model.parameters()), None)
    inputs.update(model=model_summary(model),
                  layer=(getattr(model, "feature_layer", None) if layer is None else (layer or "(the module's output)")),
                  mode="train" if train else "eval", feature_shape=list(Z.shape),
                  dtype=str(p0.dtype).replace("torch.", "") if p0 is not None else "float32",
                  device=str(device or (p0.device if p0 is not None else "cpu")))
    return Z, inputs


def remaining_budget(memory_budget, *used_tensors) -> int | None:
    b = parse_bytes(memory_budget)
    if b is None:
        return None
    used = sum(t.numel() * t.element_size() for t in used_tensors)
    return max(b - used, 1)


def model_on(model: nn.Module, device) -> nn.Module:
    """``model`` itself, or a copy on ``device`` when its parameters live elsewhere (the user's model is untouched)."""
    if device is None:
        return model
    p0 = next(iter(model.parameters()), None)
    if p0 is not None and p0.device != torch.device(device):
        import copy
        return copy.deepcopy(model).to(device)
    return model


def progress_default(progress):
    return sys.stderr.isatty() if progress is None else bool(progress)


def rank_bounds(cert) -> dict:
    """The certificate's numbers that the plot shows and people ask for."""
    out = {}
    for k in ("sigma_min_lower", "sigma_max_upper", "lambda_min_lower", "lambda_max_upper"):
        v = getattr(cert, k, None)
        if v is not None:
            out[k] = v
    for k in ("sigma_min_lower_scaled", "lambda_min_lower_scaled", "lambda_min_estimate_scaled", "shift",
              "rho", "eps_form", "whitening_error"):
        v = cert.details.get(k)
        if isinstance(v, (int, float)):
            out[k] = float(v)
    return out


def rank_report(condition, paper, equation, statement, cert, inputs, timings, t0, *, details=None,
                extra_message="") -> VerificationReport:
    """A report whose verdict is the rank certificate's, mapped by :func:`verdict_from_rank_certificate`."""
    verdict = verdict_from_rank_certificate(cert)
    for k, v in cert.timings.items():
        if k != "total":
            timings[k] = timings.get(k, 0.0) + v
    timings["total"] = time.perf_counter() - t0
    det = {"bounds": rank_bounds(cert)}
    if isinstance(cert.details.get("engine_seconds"), (int, float)):
        # Gram panels are formed inside the left-looking Cholesky: only the set-up (whitening QRs) is separate
        det["within_gram_cholesky"] = {"setup_whitening": float(cert.details["engine_seconds"])}
    det.update(details or {})
    inputs = dict(inputs, matrix_shape=[cert.n, cert.D])
    margin = cert.sigma_min_lower if verdict is Verdict.VERIFIED else None
    msg = cert.summary()
    if extra_message:
        msg = extra_message + " — " + msg
    return VerificationReport(condition=condition, paper=paper, equation=equation, statement=statement,
                              inputs=inputs, verdict=verdict, margin=margin,
                              margin_name="sigma_min lower bound" if margin is not None else "",
                              certificate=cert.to_dict(), certificate_type=type(cert).__name__,
                              timings=timings, environment=environment(), message=msg, details=det)


def singular_values(M: torch.Tensor, limit: int = 20000) -> dict | None:
    """Singular values of M (for the plot) when M is small enough to be cheap, else None."""
    if M.shape[0] > limit:
        return None
    s = torch.linalg.svdvals(M.to(torch.float64))
    return {"values": s.tolist()}


def seeded_normal(shape, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(*shape, generator=g, dtype=dtype)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def ceil_ratio(x: float) -> int:
    return int(math.ceil(x))
