"""Empirical NTK blocks and streamed NTK Gram matrices, K = J Jᵀ (seed 003 Algorithm 1; seed 000 M(θ)).

Three ways to compute a block Θ(x_i, x_i') = J(x_i) J(x_i')ᵀ ∈ R^{m_y×m_y}:

``"jacobian_contraction"``
    dense per-sample Jacobian rows (vmap(jacrev) over samples), then GEMMs. Cost ≈ n·m_y backward
    passes + (n·m_y)²·d multiply-adds.
``"ntk_vector_products"``
    rows of one side only; the other side by forward-mode products J(x_i)·(J(x_i')ᵀ e) — no second
    Jacobian is stored. Cost ≈ n·m_y backward passes + n²·m_y forward-mode passes.
``"structured"``
    per layer, from the layer inputs a and the output-gradients g = ∂f_j/∂(layer output):
    ``nn.Linear`` on (B, in) inputs by the kernel rule Θ_W = (a_i·a_i')(g_ij·g_i'j'), Θ_b = g_ij·g_i'j'
    (never forming ∂f/∂W); ``nn.Conv2d`` (zero padding) and ``nn.Linear`` on inputs with extra
    positions by per-sample weight gradients Σ_p g_p ⊗ a_p (unfold) and a GEMM; every other
    selected parameter by dense rows. Needs per-sample outputs.

``method="auto"`` picks the cheapest by :func:`ntk_cost_model`: estimated work with FLOPs of the
model's forward pass measured on one sample (``torch.utils.flop_counter``) and, for autodiff passes
(less efficient than GEMMs), a weight of 3 per FLOP:

* rows (per sample)       = 3·(F + 2·m_y·F)              F = forward FLOPs per sample
* contraction             = rows·n + 2·pairs·m_y²·d        pairs = n1·n2 (n(n+1)/2 when symmetric)
* ntk-vector products     = rows·n2 + 3·pairs·m_y·3F
* structured              = 3·(F + m_y·F)·n + rows(rest)·n + 2·pairs·(Σ_linear (in + m_y²·out) + m_y²·d_dense)

The Gram is streamed: only the upper triangle of blocks is computed (the lower one is its mirror);
a panel of rows' features is held while the others stream by, both sized from ``memory_budget``.
Output layout: (n·m_y, n·m_y) sample-major (row i·m_y + j, as J), (n, n) with ``trace=True``
(Σ_j Θ_jj), (n, m_y, m_y) / (n,) with ``diagonal_only=True``.
"""
from __future__ import annotations

import math
import weakref

import torch
from torch import nn
import torch.nn.functional as Fn

from gconv._utils import progress as _progress, format_bytes
from gconv.jacobian.operator import Jacobian

_PLANS = weakref.WeakKeyDictionary()   # model -> {structure key: (served modules, kernel-rule modules)}
METHODS = ("auto", "jacobian_contraction", "ntk_vector_products", "structured")


# ------------------------------------------------------------------ features
class _Dense:
    """Per-sample Jacobian rows as parts [(c, m_y, D_k)] (per parameter tensor; small ones merged), so
    that no copy of the whole row block is needed: Θ = Σ_k A_k B_kᵀ."""

    SMALL = 4096

    def __init__(self, parts):
        self.parts = parts

    @staticmethod
    def from_parts(parts):
        """Merge runs of adjacent small parts (column order is kept: ``rows`` is J's column order)."""
        out, run = [], []
        for t in parts:
            if t.shape[2] < _Dense.SMALL:
                run.append(t)
                continue
            if run:
                out.append(torch.cat(run, dim=2) if len(run) > 1 else run[0])
                run = []
            out.append(t)
        if run:
            out.append(torch.cat(run, dim=2) if len(run) > 1 else run[0])
        return _Dense(out)

    @staticmethod
    def cat(parts):
        if len(parts) == 1:
            return parts[0]
        return _Dense([torch.cat([p.parts[k] for p in parts]) for k in range(len(parts[0].parts))])

    @property
    def rows(self):
        return torch.cat(self.parts, dim=2) if len(self.parts) > 1 else self.parts[0]

    def slice(self, a, b):
        return _Dense([t[a:b] for t in self.parts])

    def to(self, dtype):
        return _Dense([t.to(dtype) for t in self.parts])

    def block(self, other, trace, acc=None):
        K = None
        for a, b in zip(self.parts, other.parts):
            ca, cb, m = a.shape[0], b.shape[0], a.shape[1]
            if trace:
                t = _gemm_nt(a.reshape(ca, -1), b.reshape(cb, -1), acc)
            else:
                t = _gemm_nt(a.reshape(ca * m, -1), b.reshape(cb * m, -1), acc).reshape(ca, m, cb, m)
            K = t if K is None else K.add_(t)
        return K

    def diag(self, trace, acc=None):
        K = None
        for r in self.parts:
            r = r if acc is None else r.to(acc)
            t = (r * r).sum((1, 2)) if trace else r @ r.transpose(1, 2)
            K = t if K is None else K.add_(t)
        return K


class _Structured:
    """Kernel-rule terms [(a (c,in) or None, g (c,m_y,out), weight?, bias?)] + dense rows (c,m_y,D) or None."""

    def __init__(self, terms, dense):
        self.terms, self.dense = terms, dense

    @staticmethod
    def cat(parts):
        if len(parts) == 1:
            return parts[0]
        terms = []
        for k, (a, g, w, b) in enumerate(parts[0].terms):
            terms.append((torch.cat([p.terms[k][0] for p in parts]) if w else None,
                          torch.cat([p.terms[k][1] for p in parts]), w, b))
        dense = _Dense.cat([p.dense for p in parts]) if parts[0].dense is not None else None
        return _Structured(terms, dense)

    def slice(self, a, b):
        return _Structured([(x[a:b] if x is not None else None, g[a:b], w, bb) for x, g, w, bb in self.terms],
                           self.dense.slice(a, b) if self.dense is not None else None)

    def block(self, other, trace, acc=None):
        K = self.dense.block(other.dense, trace, acc) if self.dense is not None else None
        for (a1, g1, w, b), (a2, g2, _, _) in zip(self.terms, other.terms):
            c1, m, out = g1.shape
            c2 = g2.shape[0]
            s = _gemm_nt(a1, a2, acc) if w else None
            if b:
                s = s + 1.0 if s is not None else torch.ones(c1, c2, dtype=acc or g1.dtype, device=g1.device)
            if trace:
                t = s * _gemm_nt(g1.reshape(c1, m * out), g2.reshape(c2, m * out), acc)
            else:
                t = _gemm_nt(g1.reshape(c1 * m, out), g2.reshape(c2 * m, out), acc).reshape(c1, m, c2, m) \
                    * s[:, None, :, None]
            K = t if K is None else K + t
        return K

    def diag(self, trace, acc=None):
        K = self.dense.diag(trace, acc) if self.dense is not None else None
        for a, g, w, b in self.terms:
            if acc is not None:
                a, g = (a.to(acc) if a is not None else None), g.to(acc)
            s = (a * a).sum(1) if w else None
            if b:
                s = s + 1.0 if s is not None else torch.ones(g.shape[0], dtype=g.dtype, device=g.device)
            t = s * (g * g).sum((1, 2)) if trace else s[:, None, None] * (g @ g.transpose(1, 2))
            K = t if K is None else K + t
        return K


_TILE = 64 * 2**20


def _gemm_nt(a, b, acc=None):
    """a @ bᵀ, accumulated in ``acc`` (e.g. float64) by casting tiles of at most ~64 MiB at a time."""
    if acc is None or (a.dtype == acc and b.dtype == acc):
        return a @ b.T
    ra, D = a.shape
    rb = b.shape[0]
    out = torch.empty(ra, rb, dtype=acc, device=a.device)
    isz = torch.empty((), dtype=acc).element_size()
    ta = max(1, min(ra, int(_TILE // max(D * isz, 1))))
    tb = max(1, min(rb, int(_TILE // max(D * isz, 1))))
    for j in range(0, rb, tb):
        bt = b[j:j + tb].to(acc).T
        for i in range(0, ra, ta):
            out[i:i + ta, j:j + tb] = a[i:i + ta].to(acc) @ bt
    return out


def _param_name(prefix, attr):
    return f"{prefix}.{attr}" if prefix else attr


class StructuredPlan:
    """Which selected parameters get a structured rule, and how (found once per model)."""

    def __init__(self, J: Jacobian):
        tm = J.tm
        if not tm.per_sample:
            raise ValueError(f"ntk: method='structured' needs per-sample outputs, but {tm.coupling_reason}; use "
                             "'jacobian_contraction' or call model.eval()")
        self.J, self.tm = J, tm
        counts = {}
        for _, p in tm.model.named_parameters(remove_duplicate=False):
            counts[id(p)] = counts.get(id(p), 0) + 1
        selected = set(tm.names)
        self.mods = {}   # module name -> (kind, weight selected, bias selected)
        for name, m in tm.model.named_modules():
            kind = None
            if isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward:
                kind = "linear"
            elif isinstance(m, nn.Conv2d) and type(m).forward is nn.Conv2d.forward and m.padding_mode == "zeros" \
                    and not isinstance(m.padding, str):
                kind = "conv2d"
            if kind is None:
                continue
            wn, bn = _param_name(name, "weight"), _param_name(name, "bias")
            w = wn in selected and counts.get(id(m.weight), 0) == 1
            b = m.bias is not None and bn in selected and counts.get(id(m.bias), 0) == 1
            if w or b:
                self.mods[name] = (kind, w, b)
        # calls and positions per module, from one sample: the kernel rule serves a Linear called once on (B, in)
        # A layer is served only if every call sees the sample dimension first (a model that folds
        # samples into other axes, e.g. (T, B, F) layouts, leaves it to the dense rows).
        self.kernel_mods = []
        key = (tuple(tm.names), tuple(J.data.slice(0, 1).x.shape[1:]),
               tuple((id(m), m.training) for m in tm.model.modules()))
        cached = _PLANS.setdefault(tm.model, {}).get(key)
        self.dense_flops = 0.0
        if cached is not None:
            self.mods, self.kernel_mods, self.dense_flops = dict(cached[0]), list(cached[1]), cached[2]
        elif self.mods:
            k = min(2, J.n)
            rec = self._forward_records(tm.prep(J.data.slice(0, k).x), need_grad=False)
            mods = dict(tm.model.named_modules())
            for name in list(self.mods):
                calls = rec[name]
                if not calls or any(a.shape[0] != k or o_shape[0] != k for a, o_shape in calls):
                    del self.mods[name]
                    continue
                if self.mods[name][0] == "linear" and len(calls) == 1 and calls[0][0].dim() == 2:
                    self.kernel_mods.append(name)
                else:   # per-sample weight gradient Σ_p g_p ⊗ a_p for every output: 2·m_y·|W|·positions
                    w = mods[name].weight.numel()
                    pos = sum(math.prod(o[2:]) if self.mods[name][0] == "conv2d" else math.prod(o[1:-1])
                              for _, o in calls)
                    self.dense_flops += 2.0 * tm.m_y * w * max(pos, 1)
        else:
            self.dense_flops = 0.0
        if cached is None:
            _PLANS[tm.model][key] = (dict(self.mods), list(self.kernel_mods), self.dense_flops)
        owner = {}
        for name, (kind, w, b) in self.mods.items():
            if w:
                owner[_param_name(name, "weight")] = name
            if b:
                owner[_param_name(name, "bias")] = name
        self.covered = set(owner)
        self.rest = [n for n in tm.names if n not in self.covered]
        self.dense_mods = [n for n in self.mods if n not in self.kernel_mods]
        mods = dict(tm.model.named_modules())
        self.kernel_dims = {n: (mods[n].in_features, mods[n].out_features) for n in self.kernel_mods}
        numel = dict(zip(tm.names, tm.numels))
        self.d_dense = sum(numel[n] for n in tm.names if n not in owner or owner[n] in self.dense_mods)

    # -------------------------------------------------------------- hooks
    def _forward_records(self, x, need_grad=True):
        tm, mods = self.tm, dict(self.tm.model.named_modules())
        rec = {n: [] for n in self.mods}
        handles = []

        def hook(name):
            def h(mod, inputs, output):
                a = inputs[0].detach()
                if need_grad:
                    eps = torch.zeros_like(output, requires_grad=True)
                    rec[name].append((a, eps))
                    return output + eps
                rec[name].append((a, output.shape))
                return None
            return h
        for n in self.mods:
            handles.append(mods[n].register_forward_hook(hook(n)))
        try:
            with torch.enable_grad():
                out = tm.f(tm.theta, x)
        finally:
            for h in handles:
                h.remove()
        self._last_out = out
        return rec

    def features(self, x) -> _Structured:
        tm, m_y = self.tm, self.tm.m_y
        c = x.shape[0]
        terms, dense_parts = [], {}
        if self.mods:
            rec = self._forward_records(x)
            out = self._last_out
            eps = [e for n in self.mods for _, e in rec[n]]
            eye = torch.eye(m_y, dtype=out.dtype, device=out.device)[:, None, :].expand(m_y, c, m_y)
            try:
                grads = torch.autograd.grad(out, eps, grad_outputs=eye, is_grads_batched=True)
            except RuntimeError:
                per = [torch.autograd.grad(out, eps, grad_outputs=eye[j], retain_graph=j < m_y - 1)
                       for j in range(m_y)]
                grads = [torch.stack([p[k] for p in per]) for k in range(len(eps))]
            it = iter(grads)
            mods = dict(tm.model.named_modules())
            for name, (kind, w, b) in self.mods.items():
                calls = [(a, next(it).movedim(0, 1)) for a, _ in rec[name]]   # g: (c, m_y, *out_shape)
                mod = mods[name]
                if name in self.kernel_mods:
                    a, g = calls[0]
                    terms.append((a.reshape(c, -1) if w else None, g.reshape(c, m_y, -1), w, b))
                    continue
                gw = gb = None
                for a, g in calls:
                    if kind == "linear":
                        A = a.reshape(c, -1, a.shape[-1])
                        G = g.reshape(c, m_y, -1, g.shape[-1])
                        dw = torch.einsum("cjpo,cpi->cjoi", G, A) if w else None
                        db = G.sum(2) if b else None
                    else:
                        A = Fn.unfold(a, mod.kernel_size, dilation=mod.dilation, padding=mod.padding,
                                      stride=mod.stride)                       # (c, Cin·k, L)
                        gr = mod.groups
                        G = g.reshape(c, m_y, gr, mod.out_channels // gr, -1)   # (c, m_y, g, Cout/g, L)
                        if w:
                            A = A.reshape(c, gr, -1, A.shape[-1])
                            dw = torch.einsum("cjgol,cgkl->cjgok", G, A)
                        else:
                            dw = None
                        db = G.sum(-1) if b else None
                    if w:
                        dw = dw.reshape(c, m_y, -1)
                        gw = dw if gw is None else gw + dw
                    if b:
                        db = db.reshape(c, m_y, -1)
                        gb = db if gb is None else gb + db
                if w:
                    dense_parts[_param_name(name, "weight")] = gw
                if b:
                    dense_parts[_param_name(name, "bias")] = gb
        if self.rest:
            from torch.func import jacrev, vmap
            fixed = {n: t for n, t in tm.theta.items() if n not in self.rest}

            def f1(th_rest, xi):
                return tm.f_single({**fixed, **th_rest}, xi)
            th_rest = {n: tm.theta[n] for n in self.rest}
            jac = vmap(jacrev(f1), in_dims=(None, 0))(th_rest, x) if tm.use_vmap else \
                {n: torch.stack([jacrev(f1)(th_rest, x[i])[n] for i in range(c)]) for n in self.rest}
            for n in self.rest:
                dense_parts[n] = jac[n].reshape(c, m_y, -1)
        dense = _Dense.from_parts([dense_parts[n] for n in tm.names if n in dense_parts]) if dense_parts else None
        return _Structured(terms, dense)

    def feature_bytes(self) -> float:
        m_y, isz = self.tm.m_y, self.tm.itemsize
        k = sum(i + m_y * o for i, o in self.kernel_dims.values())
        return (k + m_y * self.d_dense) * isz

    def compute_bytes(self) -> float:
        tm = self.tm
        return (tm.m_y + 2.0) * tm.act_bytes + 2.0 * tm.m_y * self.d_dense * tm.itemsize


# ------------------------------------------------------------------ cost model
# Costs in forward-pass FLOP equivalents, calibrated on a 2-core CPU (one thread) with a pre-activation
# ResNet-18 and LeNet: per-sample rows by vmap(jacrev) ≈ (1 + 4.3·m_y)·F, a forward-mode product ≈ 2.2·F
# per direction and sample, gradients w.r.t. layer outputs ≈ (1 + 2·m_y)·F, and a GEMM or einsum FLOP ≈
# 0.4 of a forward FLOP (GEMMs run faster than the memory-bound parts of a forward pass).
_ROWS, _JVP, _ACT_GRADS, _GEMM = 4.3, 2.2, 2.0, 0.4


def ntk_cost_model(J: Jacobian, n1: int | None = None, n2: int | None = None, *, symmetric: bool = True) -> dict:
    """Estimated work of each NTK method for an (n1 × n2) block over ``J``'s model and parameters.

    In forward-FLOP equivalents (F = forward FLOPs of one sample, measured with
    ``torch.utils.flop_counter``; pairs = n1·n2, or n(n+1)/2 when symmetric):

    * contraction:          (n1 + n2)·(1 + 4.3·m_y)·F + 0.4·2·pairs·m_y²·d
    * ntk-vector products:  n2·(1 + 4.3·m_y)·F + pairs·m_y·2.2·F
    * structured:           (n1 + n2)·((1 + 2·m_y)·F + 0.4·(per-sample weight-gradient FLOPs of conv /
      multi-position layers) + rows of the other parameters) + 0.4·2·pairs·(Σ_linear(in + m_y²·out) + m_y²·d_dense)

    Returns ``{"costs": {method: work or None (unavailable)}, "choice": method, "why": {...}}``.
    """
    tm = J.tm
    n1 = J.n if n1 is None else n1
    n2 = n1 if n2 is None else n2
    F, d, m = tm.forward_flops, tm.d, tm.m_y
    pairs = n1 * (n1 + 1) / 2 if symmetric else n1 * n2
    samples = n1 if symmetric else n1 + n2
    rows = (1 + _ROWS * m) * F
    costs = {"jacobian_contraction": rows * samples + _GEMM * 2 * pairs * m * m * d,
             "ntk_vector_products": rows * (n1 if symmetric else n2) + pairs * m * _JVP * F}
    why = {}
    if tm.per_sample:
        plan = StructuredPlan(J)
        if plan.mods:
            lin = sum(i + m * m * o for i, o in plan.kernel_dims.values())
            per_sample = (1 + _ACT_GRADS * m) * F + _GEMM * plan.dense_flops + (rows if plan.rest else 0.0)
            costs["structured"] = per_sample * samples + _GEMM * 2 * pairs * (lin + m * m * plan.d_dense)
        else:
            costs["structured"] = None
            why["structured"] = "no selected parameter belongs to an nn.Linear / nn.Conv2d layer"
    else:
        costs["structured"] = None
        why["structured"] = f"outputs are coupled ({tm.coupling_reason})"
    avail = {k: v for k, v in costs.items() if v is not None}
    choice = min(avail, key=avail.get)
    return {"costs": costs, "choice": choice, "why": why, "forward_flops_per_sample": F, "d": d, "m_y": m}


# ------------------------------------------------------------------ the engine
class _GramEngine:
    def __init__(self, J: Jacobian, method: str, n2: int | None = None):
        if method not in METHODS:
            raise ValueError(f"ntk: method must be one of {METHODS}, got {method!r}")
        self.J, self.tm = J, J.tm
        if method == "auto":
            method = ntk_cost_model(J, J.n, n2, symmetric=n2 is None)["choice"]
        if method == "structured":
            self.plan = StructuredPlan(J)
            if not self.plan.mods:
                pass  # no structured layer selected: structured == dense rows (all "rest"), still correct
        elif method not in ("jacobian_contraction", "ntk_vector_products"):
            raise ValueError(method)
        self.method = method
        tm, budget = self.tm, J.memory_budget
        if method == "structured":
            self.feat_bytes, comp = self.plan.feature_bytes(), self.plan.compute_bytes()
        else:
            self.feat_bytes = tm.m_y * tm.d * tm.itemsize
            comp = tm.bytes_per_sample("rows") if tm.per_sample else J.n * tm.bytes_per_sample("vjp") * tm.m_y
        fixed = J._fixed_chunk
        self.chunk = min(fixed, J.n) if fixed else max(1, min(J.n, int(budget // 2 // max(comp, 1.0))))
        if not fixed and budget // 2 < comp:
            raise MemoryError(f"ntk: one sample's Jacobian features need about {format_bytes(comp)}, more than half "
                              f"the memory budget {format_bytes(budget)}; raise memory_budget or select fewer "
                              "parameters")
        # the panel's features persist while one streamed chunk is computed (its working set ≤ chunk·comp)
        self.panel = max(self.chunk, int((budget - self.chunk * comp) // max(self.feat_bytes, 1.0)))
        # samples per side of one block product (its result, (tile·m_y)² float64, within budget/16)
        self.tile = max(1, int(math.sqrt(budget / 16 / 8) / tm.m_y))
        if fixed:
            self.tile = min(self.tile, self.chunk)

    def features(self, J: Jacobian, s: int, e: int):
        parts = []
        for a in range(s, e, self.chunk):
            b = min(a + self.chunk, e)
            if J.tm.per_sample:
                x = J.tm.prep(J.data.slice(a, b).x)
                if self.method == "structured":
                    parts.append(self.plan.features(x))
                else:
                    parts.append(_Dense.from_parts(J._rows(a, b, x, parts=True)))
            else:
                parts.append(_Dense.from_parts(J._rows(a, b, parts=True)))
        return (_Structured if self.method == "structured" else _Dense).cat(parts)


def _sym(blk, trace):
    return 0.5 * (blk + blk.T) if trace else 0.5 * (blk + blk.permute(2, 3, 0, 1))


def _nvp_block(JA: Jacobian, s, e, R: dict, budget) -> torch.Tensor:
    """Θ(x_s..e, ·) against directions R = {name: (k, *shape)} by forward-mode products: (e-s, m_y, k)."""
    tm = JA.tm
    k = next(iter(R.values())).shape[0]
    if tm.per_sample:
        x = tm.prep(JA.data.slice(s, e).x)
        c = e - s
    else:
        x = JA._all_x()
        c = JA.n
    g = max(1, min(k, int(budget // 2 // max(c * tm.bytes_per_sample("jv"), 1.0))))
    out = []
    for j0 in range(0, k, g):
        out.append(tm.jv_many(x, {n: t[j0:j0 + g] for n, t in R.items()}))     # (g, c, m_y)
    res = torch.cat(out).permute(1, 2, 0)          # (c, m_y, k)
    return res if tm.per_sample else res[s:e]


def _gram(JA: Jacobian, JB: Jacobian | None, *, method, trace, diagonal_only, out=None, progress=False,
          acc_dtype=None, checkpoint=None):
    """Θ over JA's data (× JB's, or symmetric when JB is None) as a dense tensor.

    ``acc_dtype`` (e.g. float64): products are accumulated in it, tile by tile (the Gram of the
    computed fp32 Jacobian, formed in fp64). ``checkpoint``: a :class:`_Checkpoint` (tiles done so far)."""
    eng = _GramEngine(JA, method, None if JB is None else JB.n)
    if checkpoint is not None:
        if eng.method == "ntk_vector_products":
            eng = _GramEngine(JA, "jacobian_contraction")
        checkpoint.bind(eng)
    tm, m = JA.tm, JA.m_y
    nA = JA.n
    symmetric = JB is None
    JB = JA if symmetric else JB
    nB = JB.n
    dev, dt = JA.device, (acc_dtype or JA.dtype)
    if diagonal_only:
        if not symmetric:
            raise ValueError("ntk: diagonal_only needs a single data set")
        res = torch.empty((nA,) if trace else (nA, m, m), dtype=dt, device=dev) if out is None else out
        feng = eng if eng.method != "ntk_vector_products" else _GramEngine(JA, "jacobian_contraction")
        bar = _progress(total=nA, desc="ntk diag", enabled=bool(progress), unit="sample")
        for s in range(0, nA, feng.chunk):
            e = min(s + feng.chunk, nA)
            d = feng.features(JA, s, e).diag(trace, acc_dtype)
            res[s:e] = 0.5 * (d + d.transpose(1, 2)) if not trace else d
            bar.update(e - s)
        bar.close()
        return res
    shape = (nA, nB) if trace else (nA * m, nB * m)
    if out is None:
        K = torch.empty(shape, dtype=dt, device=dev)
    else:
        if tuple(out.shape) != shape:
            raise ValueError(f"ntk_gram: out has shape {tuple(out.shape)}, expected {shape}")
        K = out
    K4 = K if trace else K.view(nA, m, nB, m)
    if eng.method == "ntk_vector_products":
        chunk = eng.chunk
        bar = _progress(total=-(-nB // chunk), desc="ntk (nvp)", enabled=bool(progress), unit="column block")
        for s in range(0, nB, chunk):
            e = min(s + chunk, nB)
            x = JB.tm.prep(JB.data.slice(s, e).x) if JB.tm.per_sample else None
            parts = JB._rows(s, e, x, parts=True)                          # J_B rows = J_Bᵀ on the output basis
            R = {n: p.reshape((e - s) * m, *shp) for n, p, shp in zip(JB.param_names, parts, JB.tm.shapes)}
            del parts
            # per-sample: row chunks as large as forward-mode products allow (directions are grouped inside),
            # the diagonal block on its own; full batch: one forward-mode pass gives every row at once
            rc = max(chunk, JA.chunk_jv // 2)
            if not JA.tm.per_sample:
                ranges = [(0, e if symmetric else nA)]
            elif symmetric:
                ranges = [(a, min(a + rc, s)) for a in range(0, s, rc)] + [(s, e)]
            else:
                ranges = [(a, min(a + rc, nA)) for a in range(0, nA, rc)]
            for a, b in ranges:
                blk = _nvp_block(JA, a, b, R, JA.memory_budget).reshape(b - a, m, e - s, m)
                if trace:
                    blk = blk.diagonal(dim1=1, dim2=3).sum(-1)
                if not symmetric:
                    _put(K4, blk, a, b, s, e, trace)
                    continue
                off = min(b, s) - a                      # rows a .. s-1: strictly above the diagonal block
                if off > 0:
                    _put(K4, blk[:off], a, a + off, s, e, trace)
                    _put(K4, blk[:off].T if trace else blk[:off].permute(2, 3, 0, 1), s, e, a, a + off, trace)
                if b > s:                                # rows s .. e-1: the diagonal block
                    _put(K4, _sym(blk[off:], trace), s, e, s, e, trace)
            bar.update(1)
        bar.close()
        return K
    bar = _progress(total=nA, desc=f"ntk ({eng.method})", enabled=bool(progress), unit="sample")
    skip = checkpoint.done_tile if checkpoint is not None else None
    for (i0, i1), (j0, j1), blk in _tiles(eng, JA, JB, symmetric, trace, acc_dtype, bar, skip):
        _put(K4, blk, i0, i1, j0, j1, trace)
        if symmetric and i0 != j0:
            _put(K4, blk.T if trace else blk.permute(2, 3, 0, 1), j0, j1, i0, i1, trace)
        if checkpoint is not None:
            checkpoint.mark(i0, j0)
    bar.close()
    if checkpoint is not None:
        checkpoint.save(final=True)
    return K


class _Checkpoint:
    """Progress of a file-backed Gram: the tiles already written, in ``<file>.progress.json``.

    The tiling (panel, chunk, tile sizes) is stored with it and reused on resume, so tile keys match."""

    def __init__(self, path, meta: dict, resume: bool, every_s: float = 30.0):
        import json
        import os
        import time
        self.path, self.meta, self.every_s, self._t = path + ".progress.json", meta, every_s, time.monotonic()
        self.done, self.tiling = set(), None
        if resume and os.path.exists(self.path):
            with open(self.path) as fh:
                st = json.load(fh)
            if st.get("meta") != meta:
                raise ValueError(f"ntk_gram: {self.path} belongs to another computation ({st.get('meta')}); remove it "
                                 "or pass resume=False")
            self.done = {tuple(t) for t in st["done"]}
            self.tiling = st["tiling"]

    def bind(self, eng):
        if self.tiling is not None:
            eng.panel, eng.chunk, eng.tile = self.tiling
        self.tiling = [eng.panel, eng.chunk, eng.tile]

    def done_tile(self, i0, j0):
        return (i0, j0) in self.done

    def mark(self, i0, j0):
        import time
        self.done.add((i0, j0))
        if time.monotonic() - self._t > self.every_s:
            self.save()

    def save(self, final=False):
        import json
        import os
        import time
        if self.flush is not None:
            self.flush()
        tmp = self.path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"meta": self.meta, "tiling": self.tiling, "done": sorted(self.done), "complete": final}, fh)
        os.replace(tmp, self.path)
        self._t = time.monotonic()

    flush = None


def _tiles(eng, JA, JB, symmetric, trace, acc, bar=None, skip=None):
    """Blocks Θ[i0:i1, j0:j1] of at most eng.tile samples a side: the upper triangle when symmetric
    (diagonal tiles exactly symmetric); panels of features of JA are held while those of JB stream.
    ``skip(i0, j0)``: tiles already done (their features are not computed when a whole panel or stream
    chunk is done)."""
    nA, nB = JA.n, JB.n
    T = eng.tile
    skip = skip or (lambda i0, j0: False)
    for p0 in range(0, nA, eng.panel):
        p1 = min(p0 + eng.panel, nA)
        inner = [(i0, j0) for i0 in range(p0, p1, T) for j0 in range(i0, p1, T)] if symmetric else []
        streams = []
        for s in range(p1 if symmetric else 0, nB, eng.chunk):
            e = min(s + eng.chunk, nB)
            streams.append((s, e, [(i0, j0) for i0 in range(p0, p1, T) for j0 in range(s, e, T)]))
        if all(skip(*t) for t in inner) and all(skip(*t) for _, _, ts in streams for t in ts):
            if bar is not None:
                bar.update(p1 - p0)
            continue
        FA = eng.features(JA, p0, p1)
        for i0, j0 in inner:
            if skip(i0, j0):
                continue
            i1, j1 = min(i0 + T, p1), min(j0 + T, p1)
            blk = FA.slice(i0 - p0, i1 - p0).block(FA.slice(j0 - p0, j1 - p0), trace, acc)
            yield (i0, i1), (j0, j1), (_sym(blk, trace) if i0 == j0 else blk)
        for s, e, ts in streams:
            if all(skip(*t) for t in ts):
                continue
            FB = eng.features(JB, s, e)
            for i0, j0 in ts:
                if skip(i0, j0):
                    continue
                i1, j1 = min(i0 + T, p1), min(j0 + T, e)
                yield (i0, i1), (j0, j1), FA.slice(i0 - p0, i1 - p0).block(FB.slice(j0 - s, j1 - s), trace, acc)
        if bar is not None:
            bar.update(p1 - p0)


def _put(K4, blk, a, b, s, e, trace):
    if trace:
        K4[a:b, s:e] = blk
    else:
        K4[a:b, :, s:e, :] = blk


# ------------------------------------------------------------------ public API
def ntk(model, x1, x2=None, params=None, method="auto", *, trace=False, chunk_size=None, memory_budget=None,
        forward_ad="auto", param_values=None) -> torch.Tensor:
    """The empirical NTK block Θ(x1, x2) = J(x1) J(x2)ᵀ of ``model`` w.r.t. the selected ``params``.

    Returns (n1, n2, m_y, m_y), or (n1, n2) with ``trace=True`` (Σ_j Θ_jj). ``x2=None`` means x2 = x1
    (only the upper triangle is computed). Needs per-sample outputs (eval-mode BatchNorm is fine); for
    a coupled model use :func:`ntk_gram` on the whole data set. ``method``: see the module docstring.
    """
    kw = dict(chunk_size=chunk_size, memory_budget=memory_budget, coupling="per_sample", forward_ad=forward_ad,
              param_values=param_values)
    J1 = Jacobian(model, x1, params, **kw)
    J2 = None if x2 is None else J1.with_data(x2)
    K = _gram(J1, J2, method=method, trace=trace, diagonal_only=False)
    n1, n2 = J1.n, (J2 or J1).n
    if trace:
        return K
    return K.view(n1, J1.m_y, n2, J1.m_y).permute(0, 2, 1, 3)


def ntk_gram(model, data, params=None, *, method="auto", trace=False, diagonal_only=False, chunk_size=None,
             memory_budget=None, coupling="auto", forward_ad="auto", param_values=None, out=None, resume=False,
             progress=None) -> torch.Tensor:
    """The NTK Gram K = J Jᵀ over a whole data set, streamed in blocks (upper triangle computed).

    Returns (n·m_y, n·m_y) with rows sample-major as :class:`Jacobian`; (n, n) with ``trace=True``;
    (n, m_y, m_y) / (n,) with ``diagonal_only=True``. With a coupled model (train-mode BatchNorm) the
    Gram is that of the whole-data-set function f_X(θ) (``coupling`` as in :class:`Jacobian`).

    ``out``: a preallocated tensor to fill, or a path to a ``.npy`` file, memory-mapped (created if
    missing) — then the tiles written so far are recorded in ``<out>.progress.json`` (every 30 s and
    at the end) and ``resume=True`` continues an interrupted run, skipping them.
    """
    import os
    import sys
    import numpy as np
    if progress is None:
        progress = sys.stderr.isatty()
    J = Jacobian(model, data, params, chunk_size=chunk_size, memory_budget=memory_budget, coupling=coupling,
                 forward_ad=forward_ad, param_values=param_values)
    ckpt = None
    if isinstance(out, (str, os.PathLike)):
        if diagonal_only:
            raise ValueError("ntk_gram: a file-backed out= is for the full Gram (diagonal_only=False)")
        path = os.fspath(out)
        shape = (J.n, J.n) if trace else (J.n * J.m_y, J.n * J.m_y)
        npdt = torch.empty((), dtype=J.dtype).numpy().dtype
        exists = resume and os.path.exists(path)
        mm = np.lib.format.open_memmap(path, mode="r+" if exists else "w+", dtype=npdt, shape=None if exists else shape)
        if mm.shape != shape or mm.dtype != npdt:
            raise ValueError(f"ntk_gram: {path} holds a {mm.dtype} array of shape {mm.shape}, expected {npdt} {shape}")
        meta = dict(n=J.n, m_y=J.m_y, d=J.d, trace=bool(trace), dtype=str(npdt), params=J.param_names[:50])
        ckpt = _Checkpoint(path, meta, resume)
        ckpt.flush = mm.flush
        out = torch.from_numpy(mm)
    elif resume:
        raise ValueError("ntk_gram: resume=True needs out= a .npy path")
    return _gram(J, None, method=method, trace=trace, diagonal_only=diagonal_only, out=out, progress=progress,
                 checkpoint=ckpt)


def gram_blocks(Js, method="auto", *, trace=False, acc_dtype=None):
    """Stream the upper triangle of J Jᵀ for one or several Jacobians over the same data (same n, m_y).

    Yields ``((r0, r1), (c0, c1), blocks)`` — sample ranges and, per Jacobian, the block of K =
    J Jᵀ on those rows and columns, (Δr·m_y, Δc·m_y) (or (Δr, Δc) with ``trace``); diagonal blocks
    (r = c) are exactly symmetric. Nothing of size (n·m_y)² is stored.
    """
    Js = [Js] if isinstance(Js, Jacobian) else list(Js)
    n, m = Js[0].n, Js[0].m_y
    if any(J.n != n or J.m_y != m for J in Js):
        raise ValueError("gram_blocks: the Jacobians must share n and m_y")
    if method == "ntk_vector_products":
        method = "jacobian_contraction"
    engs = [_GramEngine(J, method) for J in Js]
    chunk = min(e.chunk for e in engs)
    panel = max(chunk, min(e.panel for e in engs) // len(Js))
    tile = min(e.tile for e in engs)
    for e in engs:
        e.chunk, e.panel, e.tile = chunk, panel, tile
    gens = [_tiles(e, J, J, True, trace, acc_dtype) for e, J in zip(engs, Js)]
    for items in zip(*gens):
        (r0, r1), (c0, c1) = items[0][0], items[0][1]
        yield (r0, r1), (c0, c1), [blk if trace else blk.reshape((r1 - r0) * m, (c1 - c0) * m) for _, _, blk in items]
