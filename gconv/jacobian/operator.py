"""J = ∂vec(f_X(θ))/∂θ as a matrix-free linear operator over a fixed-order data set.

Seed 000, Definition 2 and eq. 2.5; seed 003, K = J Jᵀ (Algorithm 1). Shape (n·m_y, d_sel), rows
sample-major: row ``i·m_y + j`` = ∂f_j(x_i)/∂θ; columns: the selected parameters in
``param_names`` order, each flattened row-major.

* ``mv(v)``  = J v   — forward mode (``torch.func.jvp``) chunk by chunk; ``mm`` vmaps it over columns;
* ``rmv(u)`` = Jᵀ u  — reverse mode (``torch.func.vjp``), accumulated over chunks; ``rmm`` vmaps it;
* ``row_blocks()``   — dense blocks of rows (chunk·m_y × d) in order, for streaming consumers
  (``gconv.linalg.RowBlocks``); J itself is never held for the whole data set.

Chunk sizes come from ``memory_budget`` (bytes or '2GiB'; default a quarter of the device's free
memory) and the activation memory measured on the first samples, or from ``chunk_size``.
"""
from __future__ import annotations

import numpy as np
import torch

from gconv._utils import check_finite, format_bytes, progress as _progress
from gconv.data.source import as_data_source
from gconv.jacobian._functional import TangentModel, chunk_for, resolve_budget


class Jacobian:
    """The Jacobian of ``model``'s outputs over ``data`` w.r.t. the selected parameters.

    Parameters
    ----------
    model : nn.Module mapping a batch (B, ...) to outputs (B, ...) (flattened to m_y per sample).
    data : anything :func:`gconv.data.as_data_source` accepts (X, (X, Y), Dataset, DataLoader);
        targets, if present, are ignored here.
    params : which parameters are the columns; see :func:`gconv.jacobian.select_parameters`
        (None: all trainable; "last"; "ee_head" / an EEHead's ``weight`` (θ_(H−1)); names, prefixes,
        modules, Parameters, or a list of them).
    chunk_size : samples per chunk for every pass (overrides ``memory_budget``).
    memory_budget : bytes (int) or a string such as ``'2GiB'`` for the working set of one chunk.
    coupling : ``"auto"`` (per-sample when possible; train-mode BatchNorm → full batch),
        ``"per_sample"`` (refuse coupled models), ``"full_batch"`` (differentiate f_X(θ) evaluated on the
        whole data set at once, with its batch statistics — seed 003 §3 allows h_X to depend on all of X).
    forward_ad : ``"auto"`` (forward mode; if a module lacks it, J·v by the transpose of a VJP, with a
        warning naming the module), ``"forward"`` (error instead), ``"reverse"``.
    param_values : optional {name: tensor} (e.g. a state_dict of θ⁰) overriding parameter / buffer
        values; by default the operator reads the model's current values at every product.
    """

    def __init__(self, model, data, params=None, *, chunk_size=None, memory_budget=None, coupling="auto",
                 forward_ad="auto", param_values=None, progress=False):
        data = as_data_source(data)
        probe = data.slice(0, min(3, data.n)).x
        self.tm = TangentModel(model, params, probe_x=probe, values=param_values, coupling=coupling,
                               forward_ad=forward_ad, who="Jacobian")
        tm = self.tm
        self.m_y, self.d = tm.m_y, tm.d
        self.dtype, self.device = tm.dtype, tm.device
        self.param_names = list(tm.names)
        self.coupling, self.coupling_reason, self.jv_mode = tm.coupling, tm.coupling_reason, tm.jv_mode
        self.memory_budget = resolve_budget(memory_budget, self.device)
        self.progress = progress
        self._fixed_chunk = chunk_size
        self._set_data(data)

    def _set_data(self, data) -> None:
        tm = self.tm
        self.data = data
        self.n = data.n
        self.shape = (self.n * self.m_y, self.d)
        self._X = None
        if tm.per_sample:
            self.chunk_jv = chunk_for(self.memory_budget, tm.bytes_per_sample("jv"), self.n, what="J·v",
                                      who="Jacobian", fixed=self._fixed_chunk)
            self.chunk_vjp = chunk_for(self.memory_budget, tm.bytes_per_sample("vjp"), self.n, what="Jᵀ·u",
                                       who="Jacobian", fixed=self._fixed_chunk)
            self._rows_per_sample = tm.bytes_per_sample("rows")
        else:
            need = self.n * tm.bytes_per_sample("jv")
            if need > self.memory_budget:
                raise MemoryError(f"Jacobian: full-batch evaluation is needed because {self.coupling_reason}; it "
                                  f"takes about {format_bytes(need)} for n = {self.n}, over the memory budget "
                                  f"{format_bytes(self.memory_budget)}. Raise memory_budget, or call model.eval() "
                                  "for per-sample outputs")
            self.chunk_jv = self.chunk_vjp = self.n
            self._rows_per_sample = (self.n * tm.bytes_per_sample("vjp") + 2 * self.d * tm.itemsize) * self.m_y

    def with_data(self, data) -> "Jacobian":
        """The same model, parameters and settings over other data (no new probes)."""
        import copy
        new = copy.copy(self)
        new._set_data(as_data_source(data))
        return new

    @property
    def chunk_rows(self) -> int:
        """Samples per dense row block (raises MemoryError if one sample's rows exceed the budget)."""
        return chunk_for(self.memory_budget, self._rows_per_sample, self.n, what="dense Jacobian rows",
                         who="Jacobian", fixed=self._fixed_chunk)

    # ------------------------------------------------------------------ helpers
    def __repr__(self):
        return (f"Jacobian(shape={self.shape}, dtype={self.dtype}, device={self.device}, coupling={self.coupling}, "
                f"jv_mode={self.jv_mode}, params={len(self.param_names)} tensors)")

    @property
    def T(self) -> "_Adjoint":
        """The adjoint operator Jᵀ (mv ↔ rmv)."""
        return _Adjoint(self)

    def __matmul__(self, v):
        return self.mv(v) if v.dim() == 1 else self.mm(v)

    def _all_x(self):
        if self._X is None:
            self._X = self.tm.prep(self.data.tensors()[0])
        return self._X

    def _batches(self, chunk, desc=""):
        if not self.tm.per_sample:
            yield 0, self.n, self._all_x()
            return
        bar = _progress(total=self.n, desc=desc, enabled=bool(self.progress), unit="sample")
        try:
            for b in self.data.batches(chunk):
                x = self.tm.prep(b.x)
                if x.shape[0] == 0:
                    raise ValueError("Jacobian: the data source returned an empty batch")
                yield b.start, b.start + x.shape[0], x
                bar.update(x.shape[0])
        finally:
            bar.close()

    def _as_vec(self, v, shape, what):
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(v)
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"Jacobian: {what} must be a torch.Tensor or numpy array, got {type(v).__name__}")
        if v.is_complex() or not v.is_floating_point():
            raise TypeError(f"Jacobian: {what} must be real floating point, got dtype {v.dtype}")
        if tuple(v.shape) not in shape:
            raise ValueError(f"Jacobian: {what} has shape {tuple(v.shape)}; expected "
                             f"{' or '.join(str(s) for s in shape)}")
        check_finite(v, f"Jacobian: {what}")
        return v.to(device=self.device, dtype=self.dtype)

    def flatten_params(self, tensors: dict) -> torch.Tensor:
        """{name: tensor} over ``param_names`` → a (d,) vector in column order."""
        missing = [n for n in self.param_names if n not in tensors]
        if missing:
            raise ValueError(f"Jacobian.flatten_params: missing {missing}")
        return self.tm.flatten({n: torch.as_tensor(tensors[n]).to(self.device, self.dtype) for n in self.param_names})

    def unflatten_params(self, v) -> dict:
        """A (d,) vector → {name: tensor of the parameter's shape} (views)."""
        return self.tm.unflatten(self._as_vec(v, [(self.d,)], "v"))

    # ------------------------------------------------------------------ products
    def mv(self, v) -> torch.Tensor:
        """J v: (d,) → (n·m_y,)."""
        v = self._as_vec(v, [(self.d,)], "v")
        tangent = self.tm.unflatten(v)
        out = torch.empty(self.n, self.m_y, dtype=self.dtype, device=self.device)
        for s, e, x in self._batches(self.chunk_jv, "J·v"):
            out[s:e] = self.tm.jv(x, tangent)
        return out.reshape(-1)

    matvec = mv

    def rmv(self, u) -> torch.Tensor:
        """Jᵀ u: (n·m_y,) or (n, m_y) → (d,)."""
        u = self._as_vec(u, [(self.n * self.m_y,), (self.n, self.m_y)], "u").reshape(self.n, self.m_y)
        acc = torch.zeros(self.d, dtype=self.dtype, device=self.device)
        for s, e, x in self._batches(self.chunk_vjp, "Jᵀ·u"):
            _, fn = self.tm.vjp_fn(x)
            acc += self.tm.flatten(fn(u[s:e]))
        return acc

    rmatvec = rmv

    def _col_groups(self, k, chunk, kind):
        """(samples per chunk, columns per vmapped group) with their product within ``chunk`` samples."""
        if not self.tm.per_sample:
            g = int(self.memory_budget // max(self.n * self.tm.bytes_per_sample(kind), 1.0))
            return self.n, max(1, min(k, g))
        if chunk >= self.n * k:
            return self.n, k
        if chunk >= k:
            return chunk // k, k
        return 1, chunk

    def mm(self, V) -> torch.Tensor:
        """J V: (d, k) → (n·m_y, k)."""
        if not isinstance(V, (torch.Tensor, np.ndarray)) or V.ndim != 2:
            raise ValueError(f"Jacobian.mm: V must be a 2-D (d, k) matrix, got {getattr(V, 'shape', type(V))}")
        V = self._as_vec(V, [(self.d, V.shape[1])], "V")
        k = V.shape[1]
        c, g = self._col_groups(k, self.chunk_jv, "jv")
        out = torch.empty(self.n, self.m_y, k, dtype=self.dtype, device=self.device)
        for j0 in range(0, k, g):
            tang = self.tm.unflatten(V[:, j0:j0 + g])
            for s, e, x in self._batches(c, "J·V"):
                out[s:e, :, j0:j0 + g] = self.tm.jv_many(x, tang).permute(1, 2, 0)
        return out.reshape(self.n * self.m_y, k)

    matmat = mm

    def rmm(self, U) -> torch.Tensor:
        """Jᵀ U: (n·m_y, k) → (d, k)."""
        if not isinstance(U, (torch.Tensor, np.ndarray)) or U.ndim != 2:
            raise ValueError(f"Jacobian.rmm: U must be a 2-D (n·m_y, k) matrix, got "
                             f"{getattr(U, 'shape', type(U))}")
        U = self._as_vec(U, [(self.n * self.m_y, U.shape[1])], "U")
        k = U.shape[1]
        U3 = U.reshape(self.n, self.m_y, k)
        c, g = self._col_groups(k, self.chunk_vjp, "vjp")
        acc = torch.zeros(k, self.d, dtype=self.dtype, device=self.device)
        for s, e, x in self._batches(c, "Jᵀ·U"):
            _, fn = self.tm.vjp_fn(x)
            for j0 in range(0, k, g):
                cot = U3[s:e, :, j0:j0 + g].permute(2, 0, 1)
                acc[j0:j0 + g] += self.tm.flatten(self.tm.map(fn, cot), batched=True)
        return acc.T.contiguous()

    rmatmat = rmm

    def outputs(self) -> torch.Tensor:
        """f_X(θ): (n, m_y), in the same coupling mode as the products."""
        out = torch.empty(self.n, self.m_y, dtype=self.dtype, device=self.device)
        with torch.no_grad():
            for s, e, x in self._batches(self.chunk_vjp, "f(X)"):
                out[s:e] = self.tm.f(self.tm.theta, x)
        return out

    # ------------------------------------------------------------------ dense rows
    def row_blocks(self, chunk_size: int | None = None) -> "JacobianRowBlocks":
        """Dense blocks of consecutive rows (chunk·m_y × d), in order; re-iterable."""
        return JacobianRowBlocks(self, chunk_size or self.chunk_rows)

    def _rows(self, s, e, x=None, parts=False):
        """Rows of samples s..e-1 as (e-s, m_y, d), or per parameter [(e-s, m_y, numel)] with ``parts``."""
        if self.tm.per_sample:
            return self.tm.per_sample_rows(x, parts=parts)
        X = self._all_x()
        _, fn = self.tm.vjp_fn(X)
        c = e - s
        cot = torch.zeros(c * self.m_y, self.n, self.m_y, dtype=self.dtype, device=self.device)
        idx = torch.arange(c * self.m_y, device=self.device)
        cot[idx, s + idx // self.m_y, idx % self.m_y] = 1
        g = self.tm.map(fn, cot)
        ps = [g[n].reshape(c, self.m_y, -1) for n in self.param_names]
        return ps if parts else torch.cat(ps, dim=2)

    def dense(self, max_bytes="1GiB") -> torch.Tensor:
        """The whole J as a dense (n·m_y, d) tensor — for small problems and tests only."""
        from gconv._utils import parse_bytes
        need = self.shape[0] * self.shape[1] * self.tm.itemsize
        if need > parse_bytes(max_bytes):
            raise MemoryError(f"Jacobian.dense: J is {format_bytes(need)}, over max_bytes={max_bytes}; stream "
                              "row_blocks() instead")
        return torch.cat(list(self.row_blocks()), dim=0)

    def to_scipy(self):
        """A ``scipy.sparse.linalg.LinearOperator`` (numpy in/out) for SciPy's solvers."""
        from scipy.sparse.linalg import LinearOperator
        npdt = torch.empty((), dtype=self.dtype).numpy().dtype

        def wrap(fn):
            def g(a):
                a = np.asarray(a)
                return fn(torch.from_numpy(np.ascontiguousarray(a, dtype=npdt))).cpu().numpy()
            return g
        return LinearOperator(self.shape, matvec=wrap(lambda a: self.mv(a.reshape(-1))),
                              rmatvec=wrap(lambda a: self.rmv(a.reshape(-1))),
                              matmat=wrap(self.mm), rmatmat=wrap(self.rmm), dtype=npdt)


class JacobianRowBlocks:
    """Re-iterable dense row blocks of a :class:`Jacobian`: each (chunk·m_y, d), in row order."""

    def __init__(self, J: Jacobian, chunk: int):
        if not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"row_blocks: chunk_size must be a positive int, got {chunk!r}")
        self.J, self.chunk = J, chunk
        self.shape, self.dtype, self.device = J.shape, J.dtype, J.device

    def __len__(self):
        return -(-self.J.n // self.chunk)

    def __iter__(self):
        J = self.J
        if J.tm.per_sample:
            for s, e, x in J._batches(self.chunk, "J rows"):
                yield J._rows(s, e, x).reshape((e - s) * J.m_y, J.d)
        else:
            for s in range(0, J.n, self.chunk):
                e = min(s + self.chunk, J.n)
                yield J._rows(s, e).reshape((e - s) * J.m_y, J.d)


class _Adjoint:
    """Jᵀ as an operator: shape (d, n·m_y), mv = J.rmv, rmv = J.mv."""

    def __init__(self, J):
        self.J = J
        self.shape = (J.shape[1], J.shape[0])
        self.dtype, self.device = J.dtype, J.device

    def mv(self, u):
        return self.J.rmv(u)

    def rmv(self, v):
        return self.J.mv(v)

    def mm(self, U):
        return self.J.rmm(U)

    def rmm(self, V):
        return self.J.mm(V)

    @property
    def T(self):
        return self.J

    def __matmul__(self, u):
        return self.mv(u) if u.dim() == 1 else self.mm(u)
