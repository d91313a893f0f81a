"""The main job (``gconv demo``): seed 000's sine-wave experiment in short, with the safe-exploration check.

On the built-in sine set (n = 100, x ~ U[−1, 1], y = 1{sin(20x) < 0}; seed 000 §2.2) it trains

* the base method: plain full-batch gradient descent on the 4-layer softplus(100) network, and
* the EE wrapper (seed 000, Algorithm 1) around the same network and the same G: exploration by GD
  for τ steps, θ ← θ + ε·δ once, the gate frozen, exploitation of θ_(H−1) by L-BFGS (G̃ ≠ G is
  allowed, Table 6; after the switch the output is linear in θ_(H−1), so G̃ solves a convex problem),

and certifies the safe-exploration condition (seed 000, Assumption 4: rank φ(q, θ) = n with
φ = S ⊙ Z̃, S = σ̃(Z̃ q)) with :func:`safe_exploration_check` — once as the paper states it (q ~ N(0, 1),
θ at initialisation) and once for the exploitation problem actually solved (q = the frozen gate R,
θ = θ^τ after the perturbation). It prints a report, and writes ``demo.png`` and ``demo.json`` to ``--out``.
"""
from __future__ import annotations

import functools
import os
import time

import torch
from torch import nn

# the full-size setting of seed 000 §2.2 is width 300, τ = 2000 (examples/sine_wave.py); the demo is shorter
DEMO = {"width": 300, "tau": 1000, "exploit_steps": 40, "base_steps": 1200, "epsilon": 0.01, "lr": 0.1}
QUICK = {"width": 100, "tau": 300, "exploit_steps": 30, "base_steps": 600, "epsilon": 0.01, "lr": 0.1}


# --- the safe-exploration check (seed 000, Assumption 4) ---------------------------------------------
def _gate_matrix(head: nn.Module, q, output: int, seed: int) -> torch.Tensor:
    """Q ∈ R^{m_H×m_{H−1}} of S = σ̃(ζ′·Z̃ Qᵀ): the head's gate, a seeded N(0, 1) draw, or a given tensor."""
    W = head.gate_weight if getattr(head, "gate_weight", None) is not None else head.weight
    m_H, m1 = int(W.shape[1]), int(W.shape[2])
    if not 0 <= output < W.shape[0]:
        raise ValueError(f"safe_exploration_check: output {output} out of range (the head has {W.shape[0]} outputs)")
    if isinstance(q, str):
        if q == "gate":
            return W[output].detach().double().cpu()
        if q == "random":
            return torch.randn(m_H, m1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        raise ValueError(f"safe_exploration_check: q must be 'gate', 'random' or a tensor, got {q!r}")
    Q = torch.as_tensor(q, dtype=torch.float64)
    if tuple(Q.shape) != (m_H, m1):
        raise ValueError(f"safe_exploration_check: q must have shape (m_H, m_(H-1)) = ({m_H}, {m1}), "
                         f"got {tuple(Q.shape)}")
    return Q


def ee_head_inputs(model: nn.Module, head: nn.Module, X, batch_size: int = 1024) -> torch.Tensor:
    """z̄(x_i), the input of ``head`` inside ``model`` (a forward hook, model in eval mode), in float64."""
    from gconv.data.source import as_data_source
    src = as_data_source(X)
    store = []
    h = head.register_forward_hook(lambda mod, args, out: store.append(args[0].detach()))
    was = model.training
    model.eval()
    try:
        dev = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            for b in src.batches(batch_size):
                model(b.x.to(dev))
    finally:
        h.remove()
        model.train(was)
    return torch.cat(store).double().cpu()


def _inputs_and_gate(model, head, X, q, output, seed, batch_size=1024):
    """(z̄, Q): the head's inputs on X and the gate matrix, checked against each other."""
    Q = _gate_matrix(head, q, output, seed)
    z = ee_head_inputs(model, head, X, batch_size)
    if z.shape[1] + 1 != Q.shape[1]:
        raise ValueError(f"safe_exploration_check: head input has {z.shape[1]} features, expected {Q.shape[1] - 1}")
    return z, Q


def ee_head_factors(model: nn.Module, head: nn.Module, X: torch.Tensor, *, q: torch.Tensor | str = "gate",
                    output: int = 0, seed: int = 0, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The Khatri–Rao factors (S, Z̃) of φ(q, θ) for an :class:`gconv.nn.EEHead` inside ``model``, in float64.

    Z̃ = [z̄(x_i), 1] ∈ R^{n×m_{H−1}} is the head's input plus the constant neuron (captured by a
    forward hook, model in eval mode) and S = σ̃(ζ′·Z̃ qᵀ) ∈ R^{n×m_H}. ``q``: ``"gate"`` (the head's
    frozen gate R^{(output)} — or its current weight before the switch), ``"random"`` (q ~ N(0, 1) from
    ``torch.Generator(seed)``, as the paper draws it) or an (m_H, m_{H−1}) tensor.
    """
    z, Q = _inputs_and_gate(model, head, X, q, output, seed, batch_size)
    Z = torch.cat([z, torch.ones(z.shape[0], 1, dtype=torch.float64)], 1)
    S = torch.sigmoid(head.gate_zeta * (Z @ Q.t()))
    return S, Z


def safe_exploration_check(model: nn.Module, X, *, head: nn.Module | None = None, q: torch.Tensor | str = "gate",
                           output: int = 0, seed: int = 0, memory_budget=None, progress: bool = False) -> dict:
    """Seed 000, Assumption 4: certify rank φ(q, θ) = n for φ = S ⊙ Z̃ (row i = s_i ⊗ z̃_i) on the data ``X``.

    The head's input z̄ and its gate (``q``, see :func:`ee_head_factors`) go to
    :func:`gconv.verify.safe_exploration` (Khatri–Rao certificate, docs/certification.md). Returns a
    JSON-ready dict: ``verdict`` ("VERIFIED" / "NOT VERIFIED" (proved deficient) / "INCONCLUSIVE"),
    ``n``, ``m_H``, ``m_H_minus_1``, ``sigma_min_lower`` (the certified margin), ``sigma_max_upper``,
    their ratio, the report's message and seconds; ``report`` is the full VerificationReport as a dict.
    """
    import gconv.verify as V
    from gconv.nn import EEHead
    if head is None:
        heads = [m for m in model.modules() if isinstance(m, EEHead)]
        if len(heads) != 1:
            raise ValueError(f"safe_exploration_check: the model must contain exactly one EEHead, found {len(heads)}")
        head = heads[0]
    t0 = time.perf_counter()
    z, Q = _inputs_and_gate(model, head, X, q, output, seed)
    rep = V.safe_exploration(z, q=(head.gate_zeta * Q).t().contiguous(), memory_budget=memory_budget,
                             progress=progress)
    cert = rep.certificate or {}
    lo, hi = cert.get("sigma_min_lower"), cert.get("sigma_max_upper")
    verdict = {"VERIFIED": "VERIFIED", "NOT_VERIFIED": "NOT VERIFIED"}.get(str(getattr(rep.verdict, "value", rep.verdict)),
                                                                         "INCONCLUSIVE")
    m_H, m1 = int(Q.shape[0]), int(Q.shape[1])
    return {"condition": "safe exploration (seed 000, Assumption 4): rank phi(q, theta) = n",
            "verdict": verdict, "status": cert.get("status"), "n": int(z.shape[0]), "m_H": m_H,
            "m_H_minus_1": m1, "D": m_H * m1, "q": q if isinstance(q, str) else "given",
            "sigma_min_lower": lo, "sigma_max_upper": hi,
            "relative_margin": (lo / hi) if (lo and hi) else None,
            "sigma_min_lower_whitened": (cert.get("details") or {}).get("sigma_min_lower_scaled"),
            "summary": rep.message, "seconds": time.perf_counter() - t0, "report": rep.to_dict()}


# --- the sine-wave runs ----------------------------------------------------------------------------
def _gd(lr):
    return functools.partial(torch.optim.SGD, lr=lr)


def _lbfgs():
    return functools.partial(torch.optim.LBFGS, lr=1, max_iter=20, history_size=50, line_search_fn="strong_wolfe")


def run_base_gd(data, width: int, steps: int, lr: float, seed: int, eval_every: int = 10) -> dict:
    """Plain full-batch GD on MLP(1, [width]*3, 1) with softplus(100) and the logistic loss."""
    import gconv.models as M
    from gconv.train import training_error
    X, Y = data.tensors()
    model = M.MLP(1, [width] * 3, 1, seed=seed)
    opt = _gd(lr)(model.parameters())
    loss_fn = nn.BCEWithLogitsLoss()
    steps_, errs, losses = [], [], []
    t0 = time.perf_counter()
    for t in range(steps + 1):
        out = model(X)
        loss = loss_fn(out, Y)
        if t % eval_every == 0 or t == steps:
            steps_.append(t)
            losses.append(float(loss.detach()))
            errs.append(training_error(out, Y))
        if t == steps:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {"steps": steps_, "error": errs, "loss": losses, "final_error": errs[-1], "final_loss": losses[-1],
            "seconds": time.perf_counter() - t0, "model": model}


def run_ee(data, width: int, tau: int, exploit_steps: int, lr: float, epsilon: float, seed: int,
           exploit: str = "lbfgs", check_safe: bool = True, show_progress: bool = False) -> dict:
    """The EE wrapper around the same network and G (GD); G̃ = L-BFGS (``exploit="lbfgs"``) or G (``"gd"``).

    With ``check_safe`` the safe-exploration condition is certified at initialisation (q ~ N(0, 1), the
    paper's check) and at the switch (q = the frozen gate, θ = θ^τ: the exploitation problem solved)."""
    import gconv.models as M
    from gconv.train import EEWrapper
    X, _ = data.tensors()
    g_tilde = _lbfgs() if exploit == "lbfgs" else _gd(lr)
    w = EEWrapper(M.MLP(1, [width] * 3, 1, seed=seed), _gd(lr), g_tilde, tau=tau, epsilon=epsilon, seed=seed)
    checks = {}
    if check_safe:
        checks["init"] = safe_exploration_check(w.model, X, head=w.head, q="random", seed=seed)

    def on_switch(wr):
        if check_safe:
            checks["switch"] = safe_exploration_check(wr.model, X, head=wr.head, q="gate")
    w.on_switch = on_switch
    res = w.fit(data, nn.BCEWithLogitsLoss(), steps=tau + exploit_steps, eval_every=10 if exploit == "lbfgs" else 20,
                show_progress=show_progress)
    at = next(h for h in res.history if h["step"] == tau)
    steps, errs = res.series("error")
    _, losses = res.series("loss")
    lsteps = [h["step"] for h in res.history if "loss" in h]
    return {"wrapper": w, "result": res, "steps": steps, "error": errs, "loss_steps": lsteps, "loss": losses,
            "error_at_switch": at["error"], "error_after_switch": at["after_switch"]["error"],
            "final_error": res.final["error"], "final_loss": res.final["loss"], "perturbation": w.perturbation,
            "modification": w.modification, "seconds": res.seconds, "safe_exploration": checks,
            "feature_cache": res.feature_cache}


def _figure(path, data, base, ee, cfg, title_extra=""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    tau = cfg["tau"]
    ax[0].plot(base["steps"], [100 * e for e in base["error"]], label="base: gradient descent", color="tab:gray")
    ax[0].plot(ee["steps"], [100 * e for e in ee["error"]], label="EE wrapper (G = GD, G̃ = L-BFGS)",
               color="tab:blue")
    ax[0].axvline(tau, ls="--", color="k", lw=0.8, label=f"switch τ = {tau}")
    ax[0].set(xlabel="step t (one full-batch step; L-BFGS: one outer step)", ylabel="training error (%)",
              title="Training error")
    ax[0].legend()
    ax[1].semilogy(base["steps"], base["loss"], color="tab:gray", label="base: gradient descent")
    ax[1].semilogy(ee["loss_steps"], ee["loss"], color="tab:blue", label="EE wrapper")
    ax[1].axvline(tau, ls="--", color="k", lw=0.8)
    ax[1].set(xlabel="step t", ylabel="logistic loss (log scale)", title="Training loss")
    ax[1].legend()
    X, Y = data.tensors()
    xs = torch.linspace(-1, 1, 800).unsqueeze(1)
    with torch.no_grad():
        pb = torch.sigmoid(base["model"].eval()(xs))[:, 0]
        pe = torch.sigmoid(ee["wrapper"].model.eval()(xs))[:, 0]
    ax[2].plot(xs[:, 0], (torch.sin(20 * xs[:, 0]) < 0).float(), color="k", lw=0.6, alpha=0.5,
               label="target 1{sin(20x) < 0}")
    ax[2].plot(xs[:, 0], pb, color="tab:gray", label="base GD: sigmoid(f(x))")
    ax[2].plot(xs[:, 0], pe, color="tab:blue", label="EE: sigmoid(f(x))")
    ax[2].scatter(X[:, 0], Y[:, 0], s=10, color="tab:red", zorder=3, label="training points")
    ax[2].set(xlabel="x", ylabel="predicted probability of class 1", title="Fitted functions", ylim=(-0.05, 1.3))
    ax[2].legend(loc="upper center", ncol=2, fontsize=8)
    fig.suptitle(f"Sine wave (seed 000 §2.2), n = {X.shape[0]}, MLP 1→{cfg['width']}×3→1, softplus ζ = 100"
                 + title_extra)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt_check(c: dict) -> str:
    m = c["sigma_min_lower"]
    rel = c["relative_margin"]
    s = f"{c['verdict']}  (rank φ = n = {c['n']}, φ is {c['n']} × {c['D']} = {c['m_H']}·{c['m_H_minus_1']})"
    if m is not None and m > 0:
        s += f"\n      margin: σ_min(φ) ≥ {m:.3e}"
        if rel is not None:
            s += f"  (σ_min/σ_max ≥ {rel:.2e})"
    else:
        s += f"\n      {c['summary']}"
    return s


def run_demo(args) -> int:
    """``gconv demo``: exit code 0 when EE reaches zero training error and both checks are VERIFIED, else 1."""
    import gconv
    import gconv.data as D
    from gconv._utils import dumps, environment

    cfg = dict(QUICK if getattr(args, "quick", False) else DEMO)
    for k in ("width", "tau", "exploit_steps", "base_steps"):
        v = getattr(args, k, None)
        if v is not None:
            if v < 1:
                raise ValueError(f"demo: --{k.replace('_', '-')} must be >= 1, got {v}")
            cfg[k] = int(v)
    seed = int(getattr(args, "seed", 0))
    out = args.out
    os.makedirs(out, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)     # tiny tensors: one thread avoids synchronisation overhead
    t0 = time.perf_counter()
    try:
        data = D.load_builtin("sine", seed=seed)
        n = data.tensors()[0].shape[0]
        print(f"gconv {gconv.__version__} demo — seed 000 §2.2 sine wave, n = {n}, seed {seed}")
        print(f"  network: fully connected 1 → {cfg['width']} → {cfg['width']} → {cfg['width']} → 1, "
              f"softplus ζ = 100, logistic loss, full-batch GD lr {cfg['lr']}")
        print(f"\n[1/2] base: gradient descent, {cfg['base_steps']} steps ...", flush=True)
        base = run_base_gd(data, cfg["width"], cfg["base_steps"], cfg["lr"], seed)
        print(f"      training error {100 * base['final_error']:.0f} %, loss {base['final_loss']:.3g} "
              f"({base['seconds']:.1f} s)")
        print(f"\n[2/2] EE wrapper (seed 000, Algorithm 1): τ = {cfg['tau']}, ε = {cfg['epsilon']}, G = GD, "
              f"G̃ = L-BFGS ...", flush=True)
        ee = run_ee(data, cfg["width"], cfg["tau"], cfg["exploit_steps"], cfg["lr"], cfg["epsilon"], seed)
        w = ee["wrapper"]
        mod = ee["modification"]
        print(f"      model modification: last two layers → EEHead(m_(H-1) = {mod['m_H_minus_1']}, "
              f"m_H = {mod['m_H']}) ({mod['kind']})")
        print(f"      phase 1 exploration   t = 0 … {cfg['tau'] - 1}: all {sum(p.numel() for p in w.model.parameters())} "
              f"parameters by GD; training error at τ: {100 * ee['error_at_switch']:.0f} %")
        p = ee["perturbation"]
        print(f"      switch at t = {cfg['tau']}: θ ← θ + εδ once (‖εδ‖ = {p['norm']:.3f}, d = {p['d']}), "
              f"gate R = θ^τ_(H-1) frozen")
        print(f"      phase 2 exploitation  t = {cfg['tau']} … {cfg['tau'] + cfg['exploit_steps'] - 1}: only "
              f"θ_(H-1) ({w.head.weight.numel()} weights) by L-BFGS on cached features: "
              f"training error {100 * ee['final_error']:.0f} %, loss {ee['final_loss']:.2e}")
        checks = ee["safe_exploration"]
        print("\nsafe-exploration condition (seed 000, Assumption 4), certified with gconv.linalg:")
        print("  at initialisation, q ~ N(0, 1) (the paper's check): " + _fmt_check(checks["init"]))
        print("  at the switch, q = frozen gate R, θ = θ^τ (the exploitation problem): "
              + _fmt_check(checks["switch"]))
        ok = (ee["final_error"] == 0.0 and checks["init"]["verdict"] == "VERIFIED"
              and checks["switch"]["verdict"] == "VERIFIED")
        png = os.path.join(out, "demo.png")
        _figure(png, data, base, ee, cfg)
        total = time.perf_counter() - t0
        record = {"experiment": "gconv demo: seed 000 §2.2 sine wave, short", "config": {**cfg, "seed": seed, "n": n},
                  "base_gd": {k: base[k] for k in ("steps", "error", "loss", "final_error", "final_loss", "seconds")},
                  "ee": {k: ee[k] for k in ("steps", "error", "loss_steps", "loss", "error_at_switch",
                                            "error_after_switch", "final_error", "final_loss", "perturbation",
                                            "modification", "seconds", "safe_exploration")},
                  "verdict": "EE reached zero training error; safe exploration verified" if ok else
                  "EE did not reach zero training error or a check was not verified",
                  "seconds": total, "environment": environment()}
        js = os.path.join(out, "demo.json")
        with open(js, "w") as fh:
            fh.write(dumps(record, indent=1))
        print(f"\nresult: training error after {cfg['base_steps']} GD steps {100 * base['final_error']:.0f} % (base); "
              f"EE wrapper after {cfg['tau']} GD + {cfg['exploit_steps']} L-BFGS steps {100 * ee['final_error']:.0f} %"
              f"  ->  {'OK' if ok else 'NOT OK'}")
        print("        (full setting, examples/sine_wave.py: GD is at 22-27 % after 4,000 steps; docs/experiments.md)")
        print(f"figure: {png}\nnumbers: {js}\ntotal {total:.0f} s")
        return 0 if ok else 1
    finally:
        torch.set_num_threads(threads)
