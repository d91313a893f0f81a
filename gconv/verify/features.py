"""Feature extraction: stream a data set through a model and capture a named layer's output.

z̄ (seed 000: the input of the EE head) and h_X (seeds 002/003: the last hidden layer) are the
outputs of one module of the network.  :func:`extract_features` registers a forward hook on that
module (by name, ``dict(model.named_modules())[layer]``), runs the data through the model in fixed
order and in batches, and stops each forward pass as soon as the layer has produced its output (the
layers after it are never evaluated).  The models of :mod:`gconv.models` name their feature layer
(``model.feature_layer == "trunk"``), so ``layer=None`` works for them.
"""
from __future__ import annotations

import copy
import math
import sys
import time

import torch
from torch import nn

from gconv._utils import available_memory, check_finite, format_bytes, parse_bytes, progress as _progress
from gconv.data.source import as_data_source
from gconv.linalg.plan import MemoryBudgetError


class _Stop(Exception):
    pass


def resolve_layer(model: nn.Module, layer: str | None) -> str:
    """The module name whose output is the feature vector (``model.feature_layer`` when ``layer`` is None)."""
    if layer is None:
        layer = getattr(model, "feature_layer", None)
        if layer is None:
            raise ValueError(f"{type(model).__name__} names no feature layer: pass layer='<module name>' "
                             "(one of the names in model.named_modules())")
    names = dict(model.named_modules())
    if layer not in names:
        sample = ", ".join(repr(k) for k in list(names)[1:12])
        raise ValueError(f"layer {layer!r} is not a module of {type(model).__name__}; modules include {sample}")
    return layer


def extract_features(model: nn.Module, data, *, layer: str | None = None, batch_size: int = 256,
                     train: bool = False, device=None, dtype: torch.dtype = torch.float64,
                     memory_budget=None, progress: bool | None = None, timings: dict | None = None) -> torch.Tensor:
    """The output of module ``layer`` for every sample of ``data``, flattened: an (n, m) CPU tensor.

    ``data``: anything :func:`gconv.data.as_data_source` takes (inputs only are used).
    ``train``: run the model in train mode (default eval mode, as the papers' checks; the model's own
    mode and its buffers — BatchNorm running statistics — are restored afterwards).  ``device``: where the model runs (default: where its parameters
    are; the caller's model is not moved — a copy is).  ``dtype``: of the returned features (the
    model runs in its own dtype; float64 upcast is exact).  ``memory_budget`` (bytes or '16GiB'):
    the result (n·m·itemsize) and one batch must fit, else :class:`MemoryBudgetError` — raised after the
    first batch, which tells m, before the rest is computed.  ``timings`` (a dict) receives
    ``features`` seconds.
    """
    t0 = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"extract_features: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"extract_features: batch_size must be a positive int, got {batch_size!r}")
    src = as_data_source(data)
    layer = resolve_layer(model, layer)
    budget = parse_bytes(memory_budget)
    if progress is None:
        progress = sys.stderr.isatty()
    p0 = next(iter(model.parameters()), None)
    run_dev = torch.device(device) if device is not None else (p0.device if p0 is not None else torch.device("cpu"))
    if p0 is not None and p0.device != run_dev:
        model = copy.deepcopy(model).to(run_dev)
    mdtype = p0.dtype if p0 is not None else torch.float32
    module = dict(model.named_modules())[layer]
    captured = {}

    def hook(mod, inp, out):
        if isinstance(out, (tuple, list)):
            out = out[0]
        captured["out"] = out
        raise _Stop

    out = None
    was_training = model.training
    handle = module.register_forward_hook(hook)
    # train mode updates BatchNorm running statistics: keep the caller's model unchanged
    saved = {k: b.detach().clone() for k, b in model.named_buffers()} if train else {}
    model.train(train)
    bar = _progress(total=src.n, desc=f"features ({layer})", enabled=progress, unit="sample")
    try:
        with torch.no_grad():
            for b in src.batches(batch_size):
                x = b.x
                if x.is_floating_point():
                    x = x.to(run_dev, mdtype)
                else:
                    x = x.to(run_dev)
                captured.clear()
                try:
                    model(x)
                except _Stop:
                    pass
                if "out" not in captured:
                    raise RuntimeError(f"layer {layer!r} was not called in the forward pass of {type(model).__name__}")
                f = captured.pop("out").reshape(x.shape[0], -1).to("cpu", dtype)
                if out is None:
                    m = f.shape[1]
                    need = src.n * m * f.element_size() + f.numel() * f.element_size()
                    if budget is not None and need > budget:
                        raise MemoryBudgetError(
                            f"extract_features: {src.n} x {m} {str(dtype).replace('torch.', '')} features need "
                            f"{format_bytes(need)}, more than the memory budget {format_bytes(budget)}")
                    if need > available_memory("cpu"):
                        raise MemoryBudgetError(f"extract_features: {src.n} x {m} features need {format_bytes(need)}, "
                                                f"more than the free memory {format_bytes(available_memory('cpu'))}")
                    out = torch.empty(src.n, m, dtype=dtype)
                elif f.shape[1] != out.shape[1]:
                    raise RuntimeError(f"layer {layer!r} gave {f.shape[1]} features for samples {b.start}.., "
                                       f"{out.shape[1]} before")
                out[b.start:b.start + f.shape[0]] = f
                bar.update(f.shape[0])
    finally:
        handle.remove()
        model.train(was_training)
        if saved:
            with torch.no_grad():
                for k, b in model.named_buffers():
                    if k in saved:
                        b.copy_(saved[k])
        bar.close()
    check_finite(out, f"features of layer {layer!r}")
    if timings is not None:
        timings["features"] = timings.get("features", 0.0) + time.perf_counter() - t0
    return out


def model_summary(model) -> str:
    """A short name for reports: the class and the parameter count."""
    if not isinstance(model, nn.Module):
        return type(model).__name__
    n = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__} ({n:,} parameters)"


def he_normal(m: int, width: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """W ∈ R^{m×width}, entries N(0, 2/m) from a seeded generator (He initialisation)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(m, width, generator=g, dtype=dtype) * math.sqrt(2.0 / m)
