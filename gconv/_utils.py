"""Small shared helpers: byte sizes, input checks, progress, timing, JSON, environment.

Every subpackage uses these instead of its own copy, so that error messages, memory-budget
parsing and report metadata look the same everywhere.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import platform
import re
import resource
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterable

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_bytes(value: int | float | str | None) -> int | None:
    """``'16GiB'``, ``'500 MB'``, ``2e9`` or ``None`` → bytes (int) or None."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"memory size must be a positive finite number of bytes, got {value!r}")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot parse memory size {value!r}; use e.g. '16GiB', '500MB' or a number of bytes")
    out = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if out <= 0:
        raise ValueError(f"memory size must be positive, got {value!r}")
    return out


def format_bytes(n: float | int | None) -> str:
    if n is None:
        return "n/a"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def available_memory(device=None) -> int:
    """Free memory in bytes on ``device`` (MemAvailable for CPU, cudaMemGetInfo for CUDA)."""
    import torch
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def check_finite(t, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` (and the first offending index) if ``t`` has NaN/Inf."""
    import numpy as np
    import torch
    if isinstance(t, torch.Tensor):
        if t.is_floating_point() or t.is_complex():
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                idx = tuple(int(i) for i in bad.nonzero()[0].tolist())
                kind = "NaN" if bool(torch.isnan(t).any()) else "Inf"
                raise ValueError(f"{what} contains {kind} values (first at index {idx})")
    else:
        a = np.asarray(t)
        if a.dtype.kind in "fc":
            bad = ~np.isfinite(a)
            if bad.any():
                idx = tuple(int(i) for i in np.argwhere(bad)[0])
                kind = "NaN" if np.isnan(a).any() else "Inf"
                raise ValueError(f"{what} contains {kind} values (first at index {idx})")


def progress(iterable: Iterable | None = None, *, total=None, desc: str = "", enabled: bool = True, unit="it"):
    """A tqdm bar (to stderr) when ``enabled``; a silent pass-through otherwise."""
    if not enabled:
        return _Silent(iterable, total)
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)


class _Silent:
    def __init__(self, iterable, total):
        self._it, self.n, self.total = iterable, 0, total

    def __iter__(self):
        return iter(self._it)

    def update(self, k=1):
        self.n += k

    def set_postfix_str(self, *a, **k):
        pass

    def set_description(self, *a, **k):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Timings(dict):
    """``with timings.section("gram"): ...`` accumulates seconds per named section."""

    @contextmanager
    def section(self, name: str, sync_device=None):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if sync_device is not None:
                import torch
                if torch.device(sync_device).type == "cuda":
                    torch.cuda.synchronize(sync_device)
            self[name] = self.get(name, 0.0) + time.perf_counter() - t0


def environment() -> dict:
    """Library versions and machine facts, for reports and benchmark results."""
    import numpy
    import scipy
    import torch
    from gconv._version import __version__
    env = {
        "gconv": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
    }
    try:
        import triton
        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = None
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    return env


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, enums, numpy / torch scalars and arrays, paths → plain JSON values.

    Non-finite floats become the strings ``"inf"``, ``"-inf"``, ``"nan"`` so the output is strict JSON.
    """
    import numpy as np
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value if isinstance(obj.value, (str, int)) else obj.name
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else ("nan" if math.isnan(f) else ("inf" if f > 0 else "-inf"))
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    try:
        import torch
        if isinstance(obj, torch.Tensor):
            return to_jsonable(obj.detach().cpu().tolist())
        if isinstance(obj, (torch.dtype, torch.device)):
            return str(obj)
    except ImportError:
        pass
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj if isinstance(obj, (str, type(None))) else str(obj)


def from_json_float(v):
    """Inverse of :func:`to_jsonable` for floats (``"inf"`` → inf)."""
    if isinstance(v, str) and v in ("inf", "-inf", "nan"):
        return float(v)
    return v


def dumps(obj: Any, **kw) -> str:
    return json.dumps(to_jsonable(obj), allow_nan=False, **kw)
