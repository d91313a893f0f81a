"""Experiment 3 — seed 000 §3.4 on real digits: LeNet, base SGD vs the EE wrapper, and the safe-exploration check.

scikit-learn's 1,797 real 8×8 handwritten digits stand in for Semeion (1,593 16×16 digits; the
paper's Table 2 uses n = 1,000): the first 1,000 (file order) train, the other 797 test. LeNet
(seed 000 §2.2: two 5×5 convolutions of 8 filters, average pooling, fully connected 128 → 128,
softplus ζ = 100), cross-entropy, SGD batch 64, momentum 0.9, weight decay 1e-5. The EE wrapper
(Algorithm 1) merges LeNet's last two fully connected layers into an EEHead (m_(H−1) = 129 with
the constant neuron, m_H = 128 per output), switches at τ = τ₀T with τ₀ = 0.6, ε = 1e-3, G̃ = G.
Expected: base and EE test errors are comparable within seed-to-seed noise; the safe-exploration
condition (Assumption 4, rank φ(q, θ) = n) is certified on the 1,000 training digits — at
initialisation with q ~ N(0, 1) (the paper's check) and at the switch with q = the frozen gate.

    python examples/digits_ee.py --out bench/results/experiments        # 3 seeds
    python examples/digits_ee.py --quick --seeds 0 --out /tmp/digits
"""
from __future__ import annotations

import functools
import time

try:
    from examples import _common as C
except ImportError:
    import _common as C

FULL = {"n_train": 1000, "epochs": 40, "batch_size": 64, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-5,
        "tau0": 0.6, "epsilon": 1e-3}
QUICK = {"n_train": 400, "epochs": 15, "batch_size": 64, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-5,
         "tau0": 0.6, "epsilon": 1e-3}


def _split(cfg):
    import gconv.data as D
    X, Y = D.load_builtin("digits").tensors()
    k = cfg["n_train"]
    mu, sd = X[:k].mean(), X[:k].std()          # one scalar standardisation from the training pixels
    X = (X - mu) / sd
    return (X[:k], Y[:k]), (X[k:], Y[k:])


def _error(model, X, Y):
    import torch
    from gconv.train import training_error
    was = model.training
    model.eval()
    with torch.no_grad():
        e = training_error(model(X), Y)
    model.train(was)
    return e


def run_base(seed, cfg, train, test):
    """Plain SGD on LeNet, minibatch order from torch.Generator(seed + 1000·epoch)."""
    import torch
    from torch import nn

    import gconv.models as M
    X, Y = train
    model = M.LeNet(1, 10, 8, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    loss_fn = nn.CrossEntropyLoss()
    curve = [[0, _error(model, X, Y), _error(model, *test)]]
    for ep in range(cfg["epochs"]):
        perm = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed + 1000 * ep))
        for s in range(0, X.shape[0], cfg["batch_size"]):
            idx = perm[s:s + cfg["batch_size"]]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(X[idx]), Y[idx]).backward()
            opt.step()
        curve.append([ep + 1, _error(model, X, Y), _error(model, *test)])
    return {"train_error": curve[-1][1], "test_error": curve[-1][2], "curve": curve}


def run_ee(seed, cfg, train, test, progress=False):
    import torch
    from torch import nn

    import gconv.models as M
    from gconv.demo import safe_exploration_check
    from gconv.train import EEWrapper
    X, Y = train
    sgd = functools.partial(torch.optim.SGD, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    w = EEWrapper(M.LeNet(1, 10, 8, seed=seed), sgd, tau0=cfg["tau0"], total_steps=cfg["epochs"], unit="epoch",
                  epsilon=cfg["epsilon"], n=X.shape[0], seed=seed)
    checks = {"init": safe_exploration_check(w.model, X, head=w.head, q="random", seed=seed)}
    w.on_switch = lambda wr: checks.__setitem__("switch", safe_exploration_check(wr.model, X, head=wr.head, q="gate"))
    curve = [[0, _error(w.model, X, Y), _error(w.model, *test), w.phase]]

    def cb(wr, rec):
        if wr.t % -(-X.shape[0] // cfg["batch_size"]) == 0:
            curve.append([wr.epoch, _error(wr.model, X, Y), _error(wr.model, *test), wr.phase])
    res = w.fit((X, Y), nn.CrossEntropyLoss(), epochs=cfg["epochs"], batch_size=cfg["batch_size"], eval_every=None,
                show_progress=progress, callback=cb)
    return {"train_error": _error(w.model, X, Y), "test_error": _error(w.model, *test), "curve": curve,
            "tau_epochs": w.tau, "modification": w.modification, "perturbation": w.perturbation,
            "switched_at_step": res.switched_at, "feature_cache": res.feature_cache, "safe_exploration": checks}


def figure(path, runs, cfg):
    plt = C.pyplot()
    import numpy as np
    seeds = [r["seed"] for r in runs]
    col = C.seed_colors(seeds)
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    for r in runs:
        c = col[r["seed"]]
        b = np.array([x[:3] for x in r["base"]["curve"]], dtype=float)
        e = np.array([x[:3] for x in r["ee"]["curve"]], dtype=float)
        ax[0].plot(b[:, 0], 100 * b[:, 2], ls=":", color=c, label=f"seed {r['seed']}: base SGD, test")
        ax[0].plot(e[:, 0], 100 * e[:, 2], ls="-", color=c, label=f"seed {r['seed']}: EE wrapper, test")
        ax[0].plot(e[:, 0], 100 * e[:, 1], ls="--", color=c, alpha=0.5, lw=0.9, label=f"seed {r['seed']}: EE, train")
    tau = runs[0]["ee"]["tau_epochs"]
    ax[0].axvline(tau, color="k", lw=0.8)
    ax[0].text(tau, 95, f" switch τ = {tau} epochs", va="top")
    ax[0].set(xlabel="epoch", ylabel="error (%)", ylim=(-1, 100), title="Test error (and EE training error)")
    ax[0].legend(fontsize=7, ncol=len(runs))
    x = np.arange(len(runs))
    for k, (key, lab) in enumerate((("base", "base SGD"), ("ee", "EE wrapper"))):
        vals = [100 * r[key]["test_error"] for r in runs]
        bars = ax[1].bar(x + (k - 0.5) * 0.38, vals, 0.38, label=lab, color=f"C{k + 6}")
        ax[1].bar_label(bars, fmt="%.1f", fontsize=8)
    ax[1].set_xticks(x, [f"seed {r['seed']}" for r in runs])
    ax[1].set(ylabel="final test error (%)", title=f"Final test error ({len(runs)} seeds)")
    ax[1].legend(fontsize=8)
    fig.suptitle(f"Digits (sklearn 8×8, {cfg['n_train']} train / {1797 - cfg['n_train']} test), LeNet softplus ζ = 100, "
                 f"SGD lr {cfg['lr']}, EE τ₀ = {cfg['tau0']}, ε = {cfg['epsilon']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args, cfg = C.start(__doc__, QUICK, FULL, argv)
    train, test = _split(cfg)

    def run_one(job):
        a = time.perf_counter()
        base = run_base(job["seed"], cfg, train, test)
        ee = run_ee(job["seed"], cfg, train, test, args.progress)
        return {"seed": job["seed"], "base": base, "ee": ee, "seconds": time.perf_counter() - a}

    def describe(r):
        base, ee, se = r["base"], r["ee"], r["ee"]["safe_exploration"]
        return (f"seed {r['seed']}: test error base {100 * base['test_error']:.1f} %, EE {100 * ee['test_error']:.1f} % "
                f"(train {100 * base['train_error']:.1f} % / {100 * ee['train_error']:.1f} %); safe exploration "
                f"{se['init']['verdict']} (σ_min/σ_max ≥ {se['init']['relative_margin'] or 0:.1e}) / "
                f"{se['switch']['verdict']} [{r['seconds']:.0f} s]")

    def summary(runs):
        import numpy as np
        b = [r["base"]["test_error"] for r in runs]
        e = [r["ee"]["test_error"] for r in runs]
        return {"base_test_error_mean": float(np.mean(b)), "base_test_error_std": float(np.std(b)),
                "ee_test_error_mean": float(np.mean(e)), "ee_test_error_std": float(np.std(e)),
                "safe_exploration_verified": all(r["ee"]["safe_exploration"][k]["verdict"] == "VERIFIED"
                                                 for r in runs for k in ("init", "switch"))}

    return C.run_experiment(args, "digits_ee", cfg,
                            "3: digits, LeNet, base vs EE test error + safe exploration (seed 000 §3.4)",
                            [{"seed": s} for s in args.seeds], run_one, describe, summary=summary,
                            figure=lambda png, runs: figure(png, runs, cfg))


if __name__ == "__main__":
    main()
