"""The functional core of gconv.jacobian: a model, a parameter selection, and f(θ, X) → (B, m_y).

Every operator in this package (J, Jᵀ, NTK blocks, the alignment and gap solvers) is built on
:class:`TangentModel`, which

* resolves the ``params`` argument to an ordered list of parameter names (the columns of J),
* evaluates the model functionally (``torch.func.functional_call``) at the current or given θ,
* decides how samples are coupled (``per_sample`` or ``full_batch``) and refuses what it cannot
  answer honestly (dropout in training mode, outputs that are not per-sample functions),
* probes once, on a few samples, what the transforms can do (forward-mode AD, vmap) and names the
  module at fault when they cannot, and measures the activation memory and FLOPs per sample that the
  chunk-size rules and the NTK cost model use.

Rows of J are sample-major: row ``i·m_y + j`` is ∂f_j(x_i)/∂θ. Seed 003 writes K with
vec(f_X(w)ᵀ) (sample-major, as here); seed 000 writes vec(f_X(θ)) (output-major). The two differ by a
fixed row permutation, which changes neither Col(J) membership of the identically ordered target
nor any rank or Frobenius norm.
"""
from __future__ import annotations

import contextlib
import math
import warnings
import weakref
import torch
from torch import nn
from torch.func import functional_call, jvp, vjp, vmap

COUPLINGS = ("auto", "per_sample", "full_batch")
FORWARD_AD = ("auto", "forward", "reverse")

_PROBES = weakref.WeakKeyDictionary()
_BN = nn.modules.batchnorm._BatchNorm
_IN = nn.modules.instancenorm._InstanceNorm
_DROPOUT = nn.modules.dropout._DropoutNd


# ------------------------------------------------------------------ parameter selection
def _module_of(model: nn.Module, pname: str) -> str:
    return pname.rsplit(".", 1)[0] if "." in pname else ""


def _last_called_module(model: nn.Module, call) -> str:
    """Name of the last module with direct parameters that ran during ``call()``."""
    order: list[str] = []
    handles = []
    for name, m in model.named_modules():
        if any(True for _ in m.parameters(recurse=False)):
            handles.append(m.register_forward_hook(lambda mod, i, o, name=name: order.append(name) and None))
    try:
        call()
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise ValueError("params='last': no module with parameters ran in the forward pass")
    return order[-1]


def select_parameters(model: nn.Module, params=None, *, probe=None) -> list[str]:
    """Resolve ``params`` to the ordered names of the selected parameters (the columns of J).

    Accepted forms:

    * ``None`` — every parameter with ``requires_grad=True`` (``model.named_parameters()`` order);
    * ``"all"`` — every parameter, frozen ones included;
    * ``"last"`` — the trainable parameters of the last module (with parameters of its own) that
      runs in the forward pass (found with forward hooks on one sample; needs ``probe``);
    * ``"ee_head"`` — θ_(H−1) of the model's only :class:`gconv.nn.EEHead`: its ``weight``;
    * a parameter name (``"fc.weight"``) — that parameter, frozen or not;
    * a module name or dotted prefix (``"layer4"``) — that module's trainable parameters;
    * an ``nn.Parameter`` of the model (e.g. ``head.weight``, an EEHead's θ_(H−1)) — that parameter;
    * an ``nn.Module`` inside the model — its trainable parameters;
    * an iterable of any of the above — their union, in the order given, without duplicates.
    """
    named = dict(model.named_parameters())
    if not named:
        raise ValueError("the model has no parameters")
    by_id = {id(p): n for n, p in named.items()}
    modules = dict(model.named_modules())

    def trainable_under(prefix: str, what: str) -> list[str]:
        out = [n for n, p in named.items() if (prefix == "" or n == prefix or n.startswith(prefix + "."))
               and p.requires_grad]
        if not out:
            raise ValueError(f"params: {what} has no parameter with requires_grad=True")
        return out

    def one(item) -> list[str]:
        if isinstance(item, str):
            if item == "all":
                return list(named)
            if item == "last":
                if probe is None:
                    raise ValueError("params='last' needs a probe input")
                mod = _last_called_module(model, probe)
                out = [f"{mod}.{n}" if mod else n for n, p in modules[mod].named_parameters(recurse=False)
                       if p.requires_grad]
                if not out:
                    raise ValueError(f"params='last': the last module '{mod}' has no trainable parameter")
                return out
            if item == "ee_head":
                from gconv.nn import EEHead
                heads = [n for n, m in modules.items() if isinstance(m, EEHead)]
                if len(heads) != 1:
                    raise ValueError(f"params='ee_head' needs exactly one gconv.nn.EEHead in the model, "
                                     f"found {len(heads)}")
                return [f"{heads[0]}.weight" if heads[0] else "weight"]
            if item in named:
                return [item]
            if item in modules or any(n.startswith(item + ".") for n in named):
                return trainable_under(item, f"module '{item}'")
            some = ", ".join(list(named)[:6]) + (", ..." if len(named) > 6 else "")
            raise ValueError(f"params: {item!r} is neither a parameter nor a module of the model "
                             f"(parameters: {some})")
        if isinstance(item, nn.Parameter) or isinstance(item, torch.Tensor):
            if id(item) not in by_id:
                raise ValueError(f"params: a tensor of shape {tuple(item.shape)} is not a parameter of the model")
            return [by_id[id(item)]]
        if isinstance(item, nn.Module):
            for n, m in modules.items():
                if m is item:
                    return trainable_under(n, f"module '{n or type(item).__name__}'")
            raise ValueError(f"params: the {type(item).__name__} module passed is not part of the model")
        raise TypeError(f"params: cannot select parameters with a {type(item).__name__}")

    if params is None:
        names = [n for n, p in named.items() if p.requires_grad]
        if not names:
            raise ValueError("the model has no parameter with requires_grad=True; pass params= explicitly")
        return names
    items = [params] if isinstance(params, (str, nn.Module, torch.Tensor)) else list(params)
    if not items:
        raise ValueError("params: an empty selection")
    out: list[str] = []
    for it in items:
        for n in one(it):
            if n not in out:
                out.append(n)
    return out


# ------------------------------------------------------------------ module locator for error messages
@contextlib.contextmanager
def _module_stack(model: nn.Module):
    """Yields a list that holds the names of the modules being executed (innermost last).

    After an exception in a forward pass the list still holds the modules that were entered and not
    left: its last entry is the module in which the error arose.
    """
    stack: list[str] = []
    handles = []

    def enter(name):
        def hook(mod, inputs):
            stack.append(name)
        return hook

    def leave(mod, inputs, output):
        if stack:
            stack.pop()

    for name, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(enter(name)))
        handles.append(m.register_forward_hook(leave))
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


def _describe(model: nn.Module, stack: list[str]) -> str:
    if not stack:
        return "a part of the model outside any submodule's forward (e.g. in a backward formula)"
    name = stack[-1]
    mod = dict(model.named_modules())[name]
    return f"module '{name or '<root>'}' ({type(mod).__name__})"


class TransformError(RuntimeError):
    """A torch.func transform cannot run through the model; the message names the module."""


# ------------------------------------------------------------------ the tangent model
class TangentModel:
    """f(θ, X) → (B, m_y) for one model and parameter selection; see the module docstring.

    ``values`` overrides parameter / buffer values by name (state_dict keys), e.g. θ⁰ of a run.
    """

    def __init__(self, model: nn.Module, params=None, *, probe_x: torch.Tensor, values: dict | None = None,
                 coupling: str = "auto", forward_ad: str = "auto", who: str = "Jacobian"):
        if not isinstance(model, nn.Module):
            raise TypeError(f"{who}: model must be a torch.nn.Module, got {type(model).__name__}")
        if coupling not in COUPLINGS:
            raise ValueError(f"{who}: coupling must be one of {COUPLINGS}, got {coupling!r}")
        if forward_ad not in FORWARD_AD:
            raise ValueError(f"{who}: forward_ad must be one of {FORWARD_AD}, got {forward_ad!r}")
        self.model, self.who = model, who
        named = dict(model.named_parameters())
        first = next(iter(named.values()))
        self.device, self.dtype = first.device, first.dtype      # provisional, until the selection is known
        self._probe_x = probe_x
        self.names = select_parameters(model, params, probe=lambda: self._plain_forward(probe_x))
        base = {k: v.detach() for k, v in named.items()}
        base.update({k: b for k, b in model.named_buffers()})
        if values:
            for k, v in values.items():
                if k not in base:
                    continue  # state dicts may carry extra entries (e.g. optimizer-independent ones)
                v = torch.as_tensor(v)
                if v.shape != base[k].shape:
                    raise ValueError(f"{who}: value for {k!r} has shape {tuple(v.shape)}, the model's is "
                                     f"{tuple(base[k].shape)}")
                base[k] = v.detach().to(device=base[k].device, dtype=base[k].dtype)
        self.theta = {n: base[n] for n in self.names}
        self.rest = {k: v for k, v in base.items() if k not in self.theta}
        dts = {t.dtype for t in self.theta.values()}
        if len(dts) != 1 or not next(iter(dts)).is_floating_point:
            raise TypeError(f"{who}: the selected parameters must share one floating dtype, got "
                            f"{sorted(str(d) for d in dts)}")
        self.dtype = next(iter(dts))
        devs = {t.device for t in self.theta.values()}
        if len(devs) != 1:
            raise ValueError(f"{who}: the selected parameters live on several devices {sorted(map(str, devs))}")
        self.device = next(iter(devs))
        self.shapes = [tuple(self.theta[n].shape) for n in self.names]
        self.numels = [int(math.prod(s)) for s in self.shapes]
        self.offsets = [0]
        for k in self.numels:
            self.offsets.append(self.offsets[-1] + k)
        self.d = self.offsets[-1]
        self.itemsize = torch.empty((), dtype=self.dtype).element_size()
        self._decide_coupling(coupling)
        self._probe(forward_ad)

    # -------------------------------------------------------------- evaluation
    def prep(self, x):
        """Move a batch of inputs to the device; floating inputs take the parameters' dtype."""
        x = torch.as_tensor(x)
        if x.is_floating_point() and x.dtype != self.dtype:
            x = x.to(self.dtype)
        return x.to(self.device)

    @contextlib.contextmanager
    def _batch_stats_only(self):
        """Normalisation layers that would update running statistics use batch statistics without
        writing them (track_running_stats off for the call): evaluation has no side effects."""
        toggled = []
        for m in self.model.modules():
            if isinstance(m, (_BN, _IN)) and m.training and m.track_running_stats:
                m.track_running_stats = False
                toggled.append(m)
        try:
            yield
        finally:
            for m in toggled:
                m.track_running_stats = True

    def f(self, theta: dict, x: torch.Tensor) -> torch.Tensor:
        """Outputs (B, m_y) at parameters ``theta`` (selected ones; the rest fixed)."""
        with self._batch_stats_only():
            out = functional_call(self.model, {**self.rest, **theta}, (x,), tie_weights=True, strict=False)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{self.who}: the model must return one tensor, got {type(out).__name__}")
        return out.reshape(out.shape[0], -1) if out.dim() != 1 else out.reshape(-1, 1)

    def f_single(self, theta: dict, x: torch.Tensor) -> torch.Tensor:
        """One sample (no batch dimension) → (m_y,); used under vmap over samples."""
        return self.f(theta, x.unsqueeze(0))[0]

    def _plain_forward(self, x):
        with torch.no_grad(), self._batch_stats_only():
            return self.model(self.prep(x))

    # -------------------------------------------------------------- flat <-> dict
    def unflatten(self, v: torch.Tensor) -> dict:
        """(d,) or (d, k) → {name: (*shape) or (k, *shape)}."""
        if v.dim() == 1:
            return {n: v[a:b].view(s) for n, a, b, s in zip(self.names, self.offsets, self.offsets[1:], self.shapes)}
        k = v.shape[1]
        return {n: v[a:b].T.reshape(k, *s) for n, a, b, s in zip(self.names, self.offsets, self.offsets[1:],
                                                                  self.shapes)}

    def flatten(self, g: dict, batched: bool = False) -> torch.Tensor:
        """{name: tensor} → (d,);  batched: {name: (k, *shape)} → (k, d)."""
        if batched:
            return torch.cat([g[n].reshape(g[n].shape[0], -1) for n in self.names], dim=1)
        return torch.cat([g[n].reshape(-1) for n in self.names])

    # -------------------------------------------------------------- coupling
    def _decide_coupling(self, coupling: str) -> None:
        random_mods = [(n, m) for n, m in self.model.named_modules() if isinstance(m, _DROPOUT) and m.training
                       and getattr(m, "p", 0) > 0]
        if random_mods:
            n, m = random_mods[0]
            raise ValueError(f"{self.who}: module '{n}' ({type(m).__name__}, p={m.p}) is in training mode, so the "
                             "model output is random and has no well-defined Jacobian; call model.eval() "
                             "(or set its p to 0)")
        coupled = [(n, m) for n, m in self.model.named_modules()
                   if isinstance(m, _BN) and (m.training or (m.running_mean is None and m.running_var is None))]
        if coupled:
            n, m = coupled[0]
            why = (f"module '{n}' ({type(m).__name__}) normalises with batch statistics "
                   f"({'training mode' if m.training else 'no running statistics'}), so each output depends on "
                   "every sample of the batch")
            if coupling == "per_sample":
                raise ValueError(f"{self.who}: coupling='per_sample' is impossible: {why}. Call model.eval() for "
                                 "per-sample outputs, or use coupling='full_batch' (the papers' f_X(θ) with "
                                 "statistics over the whole data set)")
            self.coupling, self.coupling_reason = "full_batch", why
        elif coupling == "full_batch":
            self.coupling, self.coupling_reason = "full_batch", "requested (coupling='full_batch')"
        else:
            self.coupling, self.coupling_reason = "per_sample", "no module couples samples"

    @property
    def per_sample(self) -> bool:
        return self.coupling == "per_sample"

    # -------------------------------------------------------------- probes
    def _run_located(self, fn, what: str):
        with _module_stack(self.model) as stack:
            try:
                return fn(), None
            except Exception as exc:  # noqa: BLE001  (re-raised with the module named)
                return None, f"{what} failed in {_describe(self.model, stack)}: {type(exc).__name__}: " \
                             f"{str(exc).splitlines()[0] if str(exc) else ''}"

    def _probe(self, forward_ad: str) -> None:
        x = self.prep(self._probe_x)
        k = x.shape[0]
        out, err = self._run_located(lambda: self.f(self.theta, x), "the forward pass")
        if err:
            raise TransformError(f"{self.who}: {err}")
        if out.shape[0] != k:
            raise ValueError(f"{self.who}: the model returned {out.shape[0]} rows for a batch of {k} samples; "
                             "the output's first dimension must be the sample dimension")
        if not out.is_floating_point():
            raise TypeError(f"{self.who}: the model output has dtype {out.dtype}; a floating output is needed")
        self.m_y = int(out.shape[1])
        from gconv._utils import check_finite
        check_finite(out, f"{self.who}: the model output on the first samples")
        # The rest depends only on the model's structure, modes, selection and input shape: probe once.
        key = (tuple(self.names), self.dtype, str(self.device), tuple(x.shape[1:]), x.dtype, self.coupling,
               forward_ad, tuple((id(m), m.training) for m in self.model.modules()))
        cache = _PROBES.setdefault(self.model, {})
        if key in cache:
            for k_, v_ in cache[key].items():
                setattr(self, k_, v_)
            return
        self._probe_structure(x, out, forward_ad)
        cache[key] = {k_: getattr(self, k_) for k_ in ("act_bytes", "forward_flops", "jv_mode", "jv_error",
                                                       "use_vmap")}

    def _probe_structure(self, x, out, forward_ad: str) -> None:
        k = x.shape[0]
        # parameters that do not reach the output
        leaves = {n: t.detach().requires_grad_(True) for n, t in self.theta.items()}
        with torch.enable_grad():
            o = self.f(leaves, x)
            w = torch.randn(o.shape, generator=torch.Generator().manual_seed(1), dtype=o.dtype).to(o.device)
            grads = torch.autograd.grad((o * w).sum(), list(leaves.values()), allow_unused=True)
        unused = [n for n, g in zip(leaves, grads) if g is None]
        if unused:
            raise ValueError(f"{self.who}: selected parameters do not affect the model output (they are not used "
                             f"in the forward pass): {unused}; deselect them (params=...) or freeze them")
        # activation memory per sample: bytes saved for backward, without parameters / buffers (a Linear
        # saves its weight), and as the difference between batches of k and 1 samples (constants cancel)
        fixed = {t.untyped_storage().data_ptr() for t in list(self.theta.values()) + list(self.rest.values())
                 if isinstance(t, torch.Tensor)}

        def saved_bytes(xb):
            tot = [0]

            def pack(t):
                if t.untyped_storage().data_ptr() not in fixed:
                    tot[0] += t.numel() * t.element_size()
                return t
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                self.f(leaves, xb)
            return tot[0]
        s_k = saved_bytes(x)
        per = (s_k - saved_bytes(x[:1])) / (k - 1) if k > 1 else s_k
        self.act_bytes = int(max(per, s_k / k / 4, 1)) + self.m_y * self.itemsize
        try:
            from torch.utils.flop_counter import FlopCounterMode
            with FlopCounterMode(display=False) as fc, torch.no_grad():
                self.f(self.theta, x)
            flops = fc.get_total_flops() / k
        except Exception:  # noqa: BLE001  (flop counting is an estimate; fall back to 2 flops/param)
            flops = 0.0
        self.forward_flops = max(float(flops), 2.0 * self.d)
        # per-sample check: outputs must not depend on the other samples of the batch, and be deterministic
        if self.per_sample:
            again = self.f(self.theta, x)
            if not torch.equal(out, again):
                raise ValueError(f"{self.who}: two evaluations of the model on the same inputs differ (max "
                                 f"|diff| {float((out - again).abs().max()):.3g}); a random module is active — "
                                 "call model.eval()")
            if k > 1:
                singles = torch.cat([self.f(self.theta, x[i:i + 1]) for i in range(k)])
                scale = float(out.abs().max()) + 1.0
                tol = 1e3 * torch.finfo(self.dtype).eps * scale
                diff = float((singles - out).abs().max())
                if diff > tol:
                    raise ValueError(f"{self.who}: the outputs are not per-sample functions: a sample's output "
                                     f"changes by {diff:.3g} when other samples share its batch (a module couples "
                                     "samples). Call model.eval(), or pass coupling='full_batch' to differentiate "
                                     "the whole-data-set function f_X(θ)")
        # transforms: forward-mode AD, vmap
        tang = {n: torch.randn_like(t) for n, t in self.theta.items()}
        _, ferr = self._run_located(lambda: jvp(lambda th: self.f(th, x), (self.theta,), (tang,)),
                                    "forward-mode AD (torch.func.jvp)")
        if ferr is None and forward_ad != "reverse":
            self.jv_mode = "forward"
        elif forward_ad == "forward":
            raise TransformError(f"{self.who}: {ferr}. That module has no forward-mode AD formula; use "
                                 "forward_ad='auto' or 'reverse' for J·v by double backward, or give the module "
                                 "a jvp rule")
        else:
            _, rerr = self._run_located(lambda: self._jv_reverse(self.theta, x, tang), "double backward (J·v by "
                                        "the transpose of a VJP)")
            if rerr is not None:
                raise TransformError(f"{self.who}: cannot form J·v: {ferr or 'forward mode not requested'}; and "
                                     f"{rerr}")
            if ferr is not None:
                warnings.warn(f"{self.who}: {ferr}; J·v falls back to reverse mode (the transpose of a VJP, "
                              "exact, ~2x the cost)", RuntimeWarning, stacklevel=4)
            self.jv_mode = "reverse"
        self.jv_error = ferr
        if self.per_sample:
            _, verr = self._run_located(lambda: vmap(self.f_single, in_dims=(None, 0))(self.theta, x[:1]),
                                        "torch.func.vmap over samples")
            self.use_vmap = verr is None
            if verr:
                warnings.warn(f"{self.who}: {verr}; per-sample Jacobians use a Python loop (correct, slower)",
                              RuntimeWarning, stacklevel=4)
        else:
            self.use_vmap = True

    # -------------------------------------------------------------- primitive products
    def _jv_reverse(self, theta, x, tangent):
        out, vjp_fn = vjp(lambda th: self.f(th, x), theta)
        u0 = torch.zeros_like(out)
        _, vjp2 = vjp(lambda u: vjp_fn(u)[0], u0)
        return out, vjp2(tangent)[0]

    def jv(self, x, tangent: dict, theta: dict | None = None) -> torch.Tensor:
        """J_x · v for a batch x: (B, m_y)."""
        theta = self.theta if theta is None else theta
        if self.jv_mode == "forward":
            return jvp(lambda th: self.f(th, x), (theta,), (tangent,))[1]
        return self._jv_reverse(theta, x, tangent)[1]

    def jv_many(self, x, tangents: dict) -> torch.Tensor:
        """Batched tangents {name: (k, *shape)} → (k, B, m_y)."""
        return self.map(lambda t: self.jv(x, t), tangents)

    def vjp_fn(self, x, theta: dict | None = None):
        theta = self.theta if theta is None else theta
        out, fn = vjp(lambda th: self.f(th, x), theta)
        return out, (lambda u: fn(u)[0])

    def map(self, fn, batched):
        """vmap(fn)(batched) where vmap works through the model, a loop otherwise."""
        if self.use_vmap:
            return vmap(fn)(batched)
        if isinstance(batched, dict):
            k = next(iter(batched.values())).shape[0]
            outs = [fn({n: t[i] for n, t in batched.items()}) for i in range(k)]
        else:
            outs = [fn(b) for b in batched]
        if isinstance(outs[0], dict):
            return {n: torch.stack([o[n] for o in outs]) for n in outs[0]}
        return torch.stack(outs)

    def per_sample_rows(self, x, theta: dict | None = None, parts: bool = False):
        """Dense Jacobian rows of a per-sample batch: (B, m_y, d) (vmap(jacrev) over samples), or per
        parameter [(B, m_y, numel)] with ``parts``."""
        from torch.func import jacrev
        theta = self.theta if theta is None else theta
        if self.use_vmap:
            jac = vmap(jacrev(self.f_single), in_dims=(None, 0))(theta, x)
        else:
            eye = torch.eye(self.m_y, dtype=self.dtype, device=self.device)
            per = []
            for i in range(x.shape[0]):
                out, fn = vjp(lambda th: self.f_single(th, x[i]), theta)
                rows = [fn(eye[j])[0] for j in range(self.m_y)]
                per.append({n: torch.stack([r[n] for r in rows]) for n in self.names})
            jac = {n: torch.stack([p[n] for p in per]) for n in self.names}
        B = x.shape[0]
        ps = [jac[n].reshape(B, self.m_y, -1) for n in self.names]
        return ps if parts else torch.cat(ps, dim=2)

    # -------------------------------------------------------------- memory model (bytes per sample)
    def bytes_per_sample(self, kind: str) -> float:
        a = float(self.act_bytes)
        if kind == "jv":
            return 3.0 * a
        if kind == "vjp":
            return 2.0 * a
        if kind == "rows":
            return (self.m_y + 1.0) * a + 2.0 * self.m_y * self.d * self.itemsize
        raise KeyError(kind)


def default_budget(device) -> int:
    from gconv._utils import available_memory
    return max(int(available_memory(device) // 4), 64 * 2**20)


def resolve_budget(memory_budget, device) -> int:
    from gconv._utils import parse_bytes
    b = parse_bytes(memory_budget)
    return default_budget(device) if b is None else b


def chunk_for(budget: int, per_sample: float, n: int, *, what: str, who: str, fixed: int | None = None) -> int:
    """Samples per chunk: ``fixed`` if given, else as many as ``budget`` allows (at least 1)."""
    if fixed is not None:
        if not isinstance(fixed, int) or fixed < 1:
            raise ValueError(f"{who}: chunk_size must be a positive int, got {fixed!r}")
        return min(fixed, n)
    c = int(budget // max(per_sample, 1.0))
    if c < 1:
        from gconv._utils import format_bytes
        raise MemoryError(f"{who}: one sample's {what} needs about {format_bytes(per_sample)}, more than the "
                          f"memory budget {format_bytes(budget)}; raise memory_budget or select fewer parameters")
    return min(c, n)
