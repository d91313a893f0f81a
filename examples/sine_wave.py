"""Experiment 1 — seed 000 §2.2 / §3.4.1 and Figure 2: the sine wave, gradient descent vs the EE wrapper.

n = 100, x ~ U[−1, 1], y = 1{sin(20x) < 0}; fully connected 1 → 300 → 300 → 300 → 1 with softplus
ζ = 100 (the EE wrapper merges the last two layers into an EEHead, m_H = 300, m_(H−1) = 301); logistic
loss, full-batch gradient descent lr 0.1. Per seed:

* base: GD for τ + E_GD steps (4,000);
* EE wrapper, ε = 0.01, τ = 2,000, exploration by GD, then exploitation of θ_(H−1) by
  - G̃ = G (GD at the same rate; G̃ = G is the paper's setting, E_GD = 2,000 steps is ours — the
    paper does not state it; examples/sine_wave_exploit_gd.py measures how many it would take), and
  - G̃ = L-BFGS (strong Wolfe, 40 outer steps) from the *same* switched state (a checkpoint taken at τ);
* the safe-exploration condition certified at initialisation (q ~ N(0, 1)) and at the switch (q = R).

    python examples/sine_wave.py --out bench/results/experiments            # 3 seeds, ~10 min on 2 cores
    python examples/sine_wave.py --quick --seeds 0 --out /tmp/sine           # width 100, τ = 300
"""
from __future__ import annotations

import functools
import time

try:
    from examples import _common as C
except ImportError:      # run as a script
    import _common as C

FULL = {"width": 300, "tau": 2000, "lbfgs_steps": 40, "gd_exploit_steps": 2000, "lr": 0.1, "epsilon": 0.01}
QUICK = {"width": 100, "tau": 300, "lbfgs_steps": 30, "gd_exploit_steps": 300, "lr": 0.1, "epsilon": 0.01}


def run_seed(seed: int, cfg: dict, progress: bool = False) -> dict:
    import torch
    from torch import nn

    import gconv.data as D
    import gconv.models as M
    from gconv.demo import run_base_gd, safe_exploration_check
    from gconv.train import EEWrapper

    data = D.load_builtin("sine", seed=seed)
    X, _ = data.tensors()
    loss = nn.BCEWithLogitsLoss()
    gd = functools.partial(torch.optim.SGD, lr=cfg["lr"])
    lbfgs = functools.partial(torch.optim.LBFGS, lr=1, max_iter=20, history_size=50, line_search_fn="strong_wolfe")
    tau = cfg["tau"]
    base = run_base_gd(data, cfg["width"], tau + cfg["gd_exploit_steps"], cfg["lr"], seed, eval_every=20)
    checks = {}
    w = EEWrapper(M.MLP(1, [cfg["width"]] * 3, 1, seed=seed), gd, lbfgs, tau=tau, epsilon=cfg["epsilon"], seed=seed)
    checks["init"] = safe_exploration_check(w.model, X, head=w.head, q="random", seed=seed)
    w.on_switch = lambda wr: checks.__setitem__("switch", safe_exploration_check(wr.model, X, head=wr.head, q="gate"))
    t0 = time.perf_counter()
    explore = w.fit(data, loss, steps=tau, eval_every=20, show_progress=progress)
    t_explore = time.perf_counter() - t0
    state = w.state_dict()                      # the switched state θ^τ + εδ with R frozen
    t0 = time.perf_counter()
    ex_l = w.fit(data, loss, steps=tau + cfg["lbfgs_steps"], eval_every=1, show_progress=progress)
    t_l = time.perf_counter() - t0
    w2 = EEWrapper(M.MLP(1, [cfg["width"]] * 3, 1, seed=seed), gd, gd, tau=tau, epsilon=cfg["epsilon"], seed=seed)
    # exploitation from the same switched state with G̃ = G: a fresh G̃ state in place of L-BFGS's
    state = {**state, "optimizer": gd([nn.Parameter(w.head.weight.detach().clone())]).state_dict()}
    w2.load_state_dict(state)
    t0 = time.perf_counter()
    ex_g = w2.fit(data, loss, steps=tau + cfg["gd_exploit_steps"], eval_every=20, show_progress=progress)
    t_g = time.perf_counter() - t0
    at = next(h for h in explore.history if h["step"] == tau)
    ser = lambda r, k: [list(a) for a in zip(*r.series(k))]   # noqa: E731  [[step, value], ...]
    return {"seed": seed,
            "base_gd": {"final_error": base["final_error"], "final_loss": base["final_loss"],
                        "error_at_tau": base["error"][base["steps"].index(tau)] if tau in base["steps"] else None,
                        "curve_error": [list(a) for a in zip(base["steps"], base["error"])],
                        "seconds": base["seconds"]},
            "ee_exploration": {"error_at_tau": at["error"], "loss_at_tau": at.get("loss"),
                               "error_after_perturbation": at["after_switch"]["error"],
                               "perturbation": w.perturbation, "modification": w.modification,
                               "curve_error": ser(explore, "error"), "seconds": t_explore},
            "ee_exploit_lbfgs": {"final_error": ex_l.final["error"], "final_loss": ex_l.final["loss"],
                                 "steps": cfg["lbfgs_steps"], "curve_error": ser(ex_l, "error"),
                                 "feature_cache": ex_l.feature_cache, "seconds": t_l},
            "ee_exploit_gd": {"final_error": ex_g.final["error"], "final_loss": ex_g.final["loss"],
                              "steps": cfg["gd_exploit_steps"], "curve_error": ser(ex_g, "error"),
                              "feature_cache": ex_g.feature_cache, "seconds": t_g},
            "safe_exploration": checks}


def figure(path, runs, cfg):
    plt = C.pyplot()
    import numpy as np
    seeds = [r["seed"] for r in runs]
    col = C.seed_colors(seeds)
    fig, ax = plt.subplots(1, 3, figsize=(17, 4.8), gridspec_kw={"width_ratios": [2.2, 1, 1]})
    tau = cfg["tau"]
    for r in runs:
        c = col[r["seed"]]
        s, e = zip(*r["base_gd"]["curve_error"])
        ax[0].plot(s, [100 * v for v in e], ls=":", color=c, label=f"seed {r['seed']}: base GD")
        ee = r["ee_exploration"]["curve_error"] + r["ee_exploit_gd"]["curve_error"][1:]
        s, e = zip(*ee)
        ax[0].plot(s, [100 * v for v in e], ls="--", color=c, alpha=0.8, label=f"seed {r['seed']}: EE, G̃ = G (GD)")
        s, e = zip(*r["ee_exploit_lbfgs"]["curve_error"])
        ax[1].plot([v - tau for v in s], [100 * v for v in e], "o-", ms=3, color=c, label=f"seed {r['seed']}")
    ax[0].axvline(tau, color="k", lw=0.8)
    ax[0].text(tau, 54, f" switch τ = {tau}", va="top")
    ax[0].set(xlabel="step t (full-batch gradient descent)", ylabel="training error (%)", ylim=(-1, 56),
              title="Base GD vs EE with G̃ = G (GD at the same rate)")
    ax[0].legend(fontsize=7, ncol=len(runs), loc="lower left")
    ax[1].set(xlabel="L-BFGS outer step after the switch", ylabel="training error (%)", ylim=(-1, 56),
              title="EE with G̃ = L-BFGS, from the same switched state")
    ax[1].legend(fontsize=8)
    x = np.arange(len(runs))
    wdt = 0.27
    for k, (key, lab, hatch) in enumerate([("base_gd", f"base GD ({tau + cfg['gd_exploit_steps']} steps)", ""),
                                           ("ee_exploit_gd", "EE, G̃ = G", "//"),
                                           ("ee_exploit_lbfgs", "EE, G̃ = L-BFGS", "xx")]):
        vals = [100 * r[key]["final_error"] for r in runs]
        b = ax[2].bar(x + (k - 1) * wdt, vals, wdt, label=lab, hatch=hatch, color=f"C{k + 4}", edgecolor="k")
        ax[2].bar_label(b, fmt="%.0f", fontsize=8)
    ax[2].set_xticks(x, [f"seed {r['seed']}" for r in runs])
    ax[2].set(ylabel="final training error (%)", title="Final training error", ylim=(0, 45))
    ax[2].legend(fontsize=8)
    fig.suptitle(f"Seed 000 §2.2 sine wave: n = 100, MLP 1→{cfg['width']}×3→1, softplus ζ = 100, GD lr {cfg['lr']}, "
                 f"EE ε = {cfg['epsilon']}, τ = {tau}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args, cfg = C.start(__doc__, QUICK, FULL, argv)

    def describe(r):
        return (f"seed {r['seed']}: base GD {100 * r['base_gd']['final_error']:.0f} %  |  EE at τ "
                f"{100 * r['ee_exploration']['error_at_tau']:.0f} %, G̃ = GD {100 * r['ee_exploit_gd']['final_error']:.0f} % "
                f"(loss {r['ee_exploit_gd']['final_loss']:.3g}), G̃ = L-BFGS {100 * r['ee_exploit_lbfgs']['final_error']:.0f} % "
                f"(loss {r['ee_exploit_lbfgs']['final_loss']:.2e})  |  safe exploration "
                f"{r['safe_exploration']['init']['verdict']} / {r['safe_exploration']['switch']['verdict']}")

    def summary(runs):
        return {"base_gd_final_error": [x["base_gd"]["final_error"] for x in runs],
                "ee_gd_final_error": [x["ee_exploit_gd"]["final_error"] for x in runs],
                "ee_lbfgs_final_error": [x["ee_exploit_lbfgs"]["final_error"] for x in runs],
                "safe_exploration_verified": all(x["safe_exploration"][k]["verdict"] == "VERIFIED"
                                                 for x in runs for k in ("init", "switch"))}

    return C.run_experiment(args, "sine_wave", cfg, "1: sine wave (seed 000 §2.2, §3.4.1, Figure 2)",
                            [{"seed": s} for s in args.seeds], lambda job: run_seed(job["seed"], cfg, args.progress),
                            describe, summary=summary, figure=lambda png, runs: figure(png, runs, cfg))


if __name__ == "__main__":
    main()
