"""Memory planning: storage, block size and device from ``memory_budget`` and the free memory.

``memory_budget`` bounds the memory a call may add to the process (its working set: packed factor,
panels, factor copies); the process baseline (Python, torch) is not counted.  The plan is made from
the shapes alone, before any work, and a budget that cannot work raises :class:`MemoryBudgetError`
naming the amount that would.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import threading

from gconv._utils import available_memory, current_rss_bytes, format_bytes, parse_bytes, peak_rss_bytes
from gconv.linalg.implicit import ActivatedFeatures, DenseMatrix, ImplicitMatrix, KhatriRao, RowBlocks
from gconv.linalg.storage import PackedLower


class MemoryBudgetError(MemoryError, ValueError):
    """The memory budget (or the free memory / disk) cannot hold the smallest workable plan."""


@dataclasses.dataclass
class Plan:
    device: str
    storage: str                   # "ram" | "disk"
    block: int
    chunk_rows: int
    budget: int | None             # bytes the call may add (None: no explicit budget)
    limit: int                     # the bytes the plan must fit: min(budget, free memory)
    estimate: int                  # the planned peak working set
    components: dict
    storage_dir: str | None = None
    materialise: str | None = None  # "ram" | "disk" for one-shot row sources
    notes: list = dataclasses.field(default_factory=list)

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["estimate_human"] = format_bytes(self.estimate)
        d["limit_human"] = format_bytes(self.limit)
        return d


def _gram_components(src: ImplicitMatrix, n: int, D: int, b: int, storage: str, chunk: int,
                     materialise: str | None) -> dict:
    c = {}
    c["packed_factor"] = PackedLower.packed_bytes(n, b) if storage == "ram" else 0
    c["panel"] = 8 * n * b
    c["disk_read_buffer"] = 8 * n * b if storage == "disk" else 0
    if isinstance(src, KhatriRao):
        m = src.mS + src.mZ
        c["factors_float64"] = 8 * n * m
        c["whitened_factors"] = 8 * n * m
        c["whitening_temporaries"] = 8 * n * max(src.mS, src.mZ) * 3
        c["panel_temporaries"] = 8 * 2 * chunk * b
    else:
        c["diagonal_rows"] = 8 * b * D * 2
        c["row_chunk"] = 8 * chunk * D * 2
        c["prepass_block"] = 8 * chunk * D * 3
        if isinstance(src, ActivatedFeatures):
            c["feature_evaluation"] = 8 * src.block_rows * (src.width * 2 + D)
        if materialise == "ram":
            c["stored_rows"] = 8 * n * D
    c["vectors"] = 8 * n * 16 + 8 * b * b * 2
    # OpenBLAS packs GEMM operands in per-thread buffers (touched pages count in the RSS), plus lazily
    # imported code: a fixed allowance
    c["blas_workspace_and_overhead"] = 24 << 20
    return c


def _chunks(src, n):
    if isinstance(src, ActivatedFeatures):
        br = src.block_rows
        return sorted({max(br, (x // br) * br) for x in (4096, 1024, 256, 64)}, reverse=True)
    return [min(x, n) for x in (4096, 1024, 256, 64)]


def resolve_device(device, src) -> str:
    import torch
    if device is None:
        dev = getattr(src, "device", "cpu")
        dev = "cpu" if dev is None else str(dev)
        return "cuda" if dev.startswith("cuda") and torch.cuda.is_available() else "cpu"
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} requested but no CUDA device is available "
                           f"(torch {torch.__version__}, CUDA build: {torch.version.cuda is not None})")
    if d.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}")
    return str(d) if d.type == "cuda" else "cpu"


def make_plan(src: ImplicitMatrix, *, memory_budget=None, device="cpu", checkpoint_dir=None,
              block_size=None, block_multiple: int = 1) -> Plan:
    from gconv.linalg.cholesky import pick_block
    n, D = src.shape
    budget = parse_bytes(memory_budget)
    free = available_memory(device if device != "cpu" else None)
    limit = min(budget, int(free * 0.95)) if budget is not None else int(free * 0.85)
    notes = []
    if budget is not None and budget > free:
        notes.append(f"memory_budget {format_bytes(budget)} exceeds the free memory now "
                     f"({format_bytes(free)}); planning for the latter")
    materialise = None
    if isinstance(src, RowBlocks) and src.needs_materialisation:
        materialise = "ram" if 8 * n * D <= limit // 3 else "disk"
    b0 = pick_block(n, block_size)
    if block_multiple > 1 and block_size is None and b0 >= block_multiple:
        b0 = (b0 // block_multiple) * block_multiple
    cands = [b0] if block_size is not None else sorted({b0, *[x for x in (1024, 512, 256, 128, 64) if x < b0]},
                                                       reverse=True)
    best = None
    for storage in ("ram", "disk"):
        for b in cands:
            for ch in _chunks(src, n):
                comp = _gram_components(src, n, D, b, storage, ch, materialise)
                est = sum(comp.values())
                if best is None or est < best[0]:
                    best = (est, storage, b, ch, comp)
                if est <= limit:
                    sdir = None
                    if storage == "disk":
                        sdir = checkpoint_dir
                        need = PackedLower.packed_bytes(n, b)
                        where = sdir or os.environ.get("TMPDIR", "/tmp")
                        os.makedirs(where, exist_ok=True)
                        if shutil.disk_usage(where).free < need * 1.05:
                            continue
                        notes.append(f"packed factor on disk ({format_bytes(need)}) in "
                                     f"{sdir or 'a temporary directory'}: the RAM plan needs "
                                     f"{format_bytes(best_ram(src, n, D, cands, materialise))}")
                    if isinstance(src, (DenseMatrix, KhatriRao)) or (isinstance(src, RowBlocks) and src._fn is not None):
                        src.block_rows = int(ch)
                    return Plan(device, storage, b, ch, budget, limit, est, comp, sdir, materialise, notes)
    est, storage, b, ch, comp = best
    need_ram = best_ram(src, n, D, cands, materialise)
    raise MemoryBudgetError(
        f"certify_full_row_rank: n = {n}, D = {D} cannot be planned within {format_bytes(limit)} "
        f"(memory_budget={format_bytes(budget) if budget else 'None'}, free {format_bytes(free)}): it needs at least "
        f"{format_bytes(est)} with the packed factor on disk (block {b}), or {format_bytes(need_ram)} in RAM")


def best_ram(src, n, D, cands, materialise) -> int:
    return min(sum(_gram_components(src, n, D, b, "ram", ch, materialise).values())
               for b in cands for ch in _chunks(src, n))


class PeakMemory:
    """Peak extra memory of a block: the larger of (a) the resident-set growth over the RSS at entry
    (sampled every ``interval`` s, and exact via ru_maxrss when the block sets a new process maximum)
    and (b) the peak of NumPy allocations traced by :mod:`tracemalloc` (which sees the working set
    even when freed memory is reused inside a long-running process).  CUDA peak where used."""

    def __init__(self, interval: float = 0.01, device: str = "cpu", trace: bool = True):
        self.interval, self.device, self.trace = interval, device, trace
        self.peak = 0

    def __enter__(self):
        import tracemalloc
        self._tm_started = False
        if self.trace:
            if tracemalloc.is_tracing():
                tracemalloc.reset_peak()
                self._tm0 = tracemalloc.get_traced_memory()[0]
            else:
                tracemalloc.start()
                self._tm_started = True
                self._tm0 = 0
        self.base = current_rss_bytes()
        self.max0 = peak_rss_bytes()
        self._stop = threading.Event()
        self._m = self.base

        def run():
            while not self._stop.wait(self.interval):
                r = current_rss_bytes()
                if r > self._m:
                    self._m = r
        self._t = threading.Thread(target=run, daemon=True)
        self._t.start()
        if self.device.startswith("cuda"):
            import torch
            torch.cuda.reset_peak_memory_stats()
            self._cuda0 = torch.cuda.memory_allocated()
        return self

    def sample(self):
        r = current_rss_bytes()
        if r > self._m:
            self._m = r

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.sample()
        m = self._m
        mx = peak_rss_bytes()
        if mx > self.max0:
            m = max(m, mx)
        self.peak = max(0, m - self.base)
        if self.trace:
            import tracemalloc
            self.traced_peak = max(0, tracemalloc.get_traced_memory()[1] - self._tm0)
            if self._tm_started:
                tracemalloc.stop()
            self.peak = max(self.peak, self.traced_peak)
        if self.device.startswith("cuda"):
            import torch
            self.cuda_peak = torch.cuda.max_memory_allocated() - self._cuda0
        return False
