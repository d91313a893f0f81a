"""Experiment 4 — seed 004 (Chen, Vanden-Eijnden & Bruna) Experiment 1: convergence when fitting random data.

A shallow network under the mean-field scaling (the paper's eq. 1), f(x) = (1/m) Σ_i c_i σ(w_iᵀx/√d)
(``gconv.models.P3L`` with ``embedding="identity"``: φ_j(x) = x_j, D = d, which *is* eq. 1; Rademacher
c fixed, W ~ N(0, 1) trained — Appendix I), fitted by full-batch gradient descent with step δ = 1
(W ← W − δ·m·∂L/∂W, eq. 9) for 50,000 steps (Appendix I) on the squared loss L = (1/2n) Σ_a (f(x_a) − y_a)²,
to random data x_a ~ N(0, I_20), y_a ~ U[−½, ½] (d = 20).
Expected (paper, Figure 1): the loss decays at a (nearly) linear rate — a straight line on a log scale —
for n = 20 and 40, and more slowly as n grows. Corollary 1 covers n ≤ d: then G = XXᵀ/d ≻ 0
(λ_min(G) is recorded; for n > d it is 0 and the theorem does not apply).

The paper states neither the width m nor the activation σ of this experiment: we use m = 1,000 and run
both σ = tanh and σ = ReLU (one panel each) — the outcome for n = 40 > d depends on σ (see
docs/experiments.md §4).

The rate is measured as the slope of log10 L per 1,000 steps over the first quarter, the second
quarter and the second half of the run (equal slopes = a linear rate); a loss that reached the float64
floor (≤ 1e-28) ends the windows there.

    python examples/p3l_linear_rate.py --out bench/results/experiments     # 3 seeds, n = 20, 40, 80, 160
    python examples/p3l_linear_rate.py --quick --seeds 0 --out /tmp/p3l
"""
from __future__ import annotations

import itertools
import math
import time

try:
    from examples import _common as C
except ImportError:
    import _common as C

FULL = {"d": 20, "m": 1000, "ns": [20, 40, 80, 160], "steps": 50000, "step_size": 1.0, "record_every": 100,
        "activations": ["tanh", "relu"]}
QUICK = {"d": 20, "m": 200, "ns": [20, 40, 80], "steps": 6000, "step_size": 1.0, "record_every": 20,
         "activations": ["tanh", "relu"]}
FLOOR = 1e-28      # below this the float64 loss is rounding noise: the rate windows stop there


def slope(curve, a, b):
    """Least-squares slope of log10 L against step over steps in [a, b], per 1,000 steps."""
    pts = [(s, math.log10(v)) for s, v in curve if a <= s <= b and v > FLOOR]
    if len(pts) < 2:
        return None
    ms = sum(p[0] for p in pts) / len(pts)
    ml = sum(p[1] for p in pts) / len(pts)
    num = sum((p[0] - ms) * (p[1] - ml) for p in pts)
    den = sum((p[0] - ms) ** 2 for p in pts)
    return 1000 * num / den


def run(n: int, seed: int, cfg: dict, activation: str = "tanh") -> dict:
    import torch

    import gconv.data as D
    import gconv.models as M

    X, Y = D.load_builtin("gaussian_regression", n=n, seed=seed, d=cfg["d"], dtype=torch.float64).tensors()
    model = M.P3L(cfg["d"], cfg["m"], embedding="identity", scaling="paper", activation=activation, seed=seed).double()
    lam = torch.linalg.eigvalsh(model.gram(X)).min().item()
    opt = torch.optim.SGD(model.parameters(), lr=cfg["step_size"] * model.lr_scale)
    curve = []
    t0 = time.perf_counter()
    T = cfg["steps"]
    for t in range(T + 1):
        loss = 0.5 * ((model(X) - Y) ** 2).mean()
        if t % cfg["record_every"] == 0 or t == T:
            curve.append([t, float(loss.detach())])
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"shallow MF net ({activation}) n={n} seed={seed}: the loss is {loss.item()} at step {t}")
        if t == T:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    end = next((s for s, v in curve if v <= FLOOR), T)       # the windows end where the loss hit the floor
    rates = {"first_quarter": slope(curve, 0, end // 4), "second_quarter": slope(curve, end // 4, end // 2),
             "second_half": slope(curve, end // 2, end)}
    return {"activation": activation, "n": n, "seed": seed, "lambda_min_G": lam,
            "initial_loss": curve[0][1], "final_loss": curve[-1][1],
            "log10_decrease": math.log10(curve[0][1] / max(curve[-1][1], 1e-300)),
            "rate_log10_per_1000_steps": rates, "rate_window_end": end, "curve": curve, "seconds": time.perf_counter() - t0}


def figure(path, runs, cfg, seeds):
    import numpy as np
    plt = C.pyplot()
    acts = cfg["activations"]
    fig, ax = plt.subplots(1, len(acts) + 1, figsize=(6.2 * len(acts) + 6, 4.8))
    floor = max(1e-32, min(v for r in runs for _, v in r["curve"] if v > 0) / 2)
    for a, act in enumerate(acts):
        for k, n in enumerate(cfg["ns"]):
            for j, r in enumerate(r for r in runs if r["n"] == n and r["activation"] == act):
                s, v = zip(*r["curve"])
                ax[a].semilogy(s, v, color=f"C{k}", alpha=0.9, lw=1.3, label=f"n = {n}" if j == 0 else None)
        ax[a].set(xlabel="gradient-descent step (δ = 1, full batch)", ylabel="training loss (1/2n)Σ(f − y)²  (log scale)",
                  title=f"σ = {act}: training loss (one line per seed)")
        ax[a].set_ylim(bottom=floor)
        ax[a].legend(title=f"d = {cfg['d']}, m = {cfg['m']}")
    keys = [("first_quarter", "0–T/4"), ("second_quarter", "T/4–T/2"), ("second_half", "T/2–T")]
    groups = [(act, n) for act in acts for n in cfg["ns"]]
    x = np.arange(len(groups))
    w = 0.27
    for i, (key, lab) in enumerate(keys):
        mean = [np.mean([-r["rate_log10_per_1000_steps"][key] for r in runs
                         if (r["activation"], r["n"]) == g and r["rate_log10_per_1000_steps"][key] is not None] or [np.nan])
                for g in groups]
        ax[-1].bar(x + (i - 1) * w, mean, w, label=lab, color=f"C{i + 5}")
    ax[-1].set_yscale("log")
    ax[-1].set_xticks(x, [f"{act}\nn = {n}" for act, n in groups], fontsize=8)
    ax[-1].set(ylabel="decay rate: −Δlog10 L per 1,000 steps (mean over seeds)",
               title="Rate per window (equal bars = linear rate;\nT = the step the loss reached 1e-28, else the last)")
    ax[-1].legend()
    fig.suptitle(f"Seed 004 Experiment 1: shallow mean-field network (eq. 1) fitting random data "
                 f"(x ~ N(0, I_{cfg['d']}), y ~ U[−½, ½]), {cfg['steps']:,} GD steps, seeds {', '.join(map(str, seeds))}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args, cfg = C.start(__doc__, QUICK, FULL, argv)

    def describe(r):
        rt = r["rate_log10_per_1000_steps"]
        return (f"σ = {r['activation']}, n = {r['n']:4d} seed {r['seed']}: loss {r['initial_loss']:.2e} -> "
                f"{r['final_loss']:.2e}; rate (−log10 L per 1000 steps) {-rt['first_quarter']:.2f} / "
                f"{-rt['second_quarter']:.2f} / {-rt['second_half']:.2f}; λ_min(G) = {r['lambda_min_G']:.2e} "
                f"[{r['seconds']:.0f} s]")

    jobs = [{"activation": act, "seed": seed, "n": n}
            for act, seed, n in itertools.product(cfg["activations"], args.seeds, cfg["ns"])]
    return C.run_experiment(args, "p3l_linear_rate", cfg,
                            "4: shallow mean-field net (eq. 1) on random data (seed 004, Experiment 1)", jobs,
                            lambda job: run(job["n"], job["seed"], cfg, job["activation"]), describe,
                            figure=lambda png, runs: figure(png, runs, cfg, args.seeds))


if __name__ == "__main__":
    main()
