"""Experiment 5 — seeds 002/003 (Kawaguchi & Sun), Algorithm 1 on real digits, with the expressivity condition verified.

LeNet (softplus ζ = 100) with the papers' extra fully connected last hidden layer of ⌈1.1 n⌉ units
(h_X), trained on the first n = 1,000 of scikit-learn's real 8×8 digits (797 held out) by
``gconv.train.TwoPhase``: phase 1 SGD (batch 64, momentum 0.9, weight decay 1e-5) on every layer; at
τ = τ₀T (τ₀ = 0.6) every layer but the last gets δ_h ~ N(0, δ₀² I), δ₀ = 1e-3, once; phase 2 trains
only the last layer (η_t = η·[0, …, 0, 1, …, 1], the paper's §7 setting), with rank K(w^k) ≥ rank K(w^τ)
(K = J Jᵀ over all of w, on a fixed subset of training samples) checked by gconv.jacobian + gconv.linalg.

The expressivity condition (Assumption 1): rank [h_X(w), 1_n] = n, certified by
``gconv.linalg.certify_full_row_rank(ActivatedFeatures(Z, W, b, "softplus"))`` — Z the LeNet features
entering the wide layer, W, b its weights — at initialisation and at w^τ (after the perturbation; phase
2 does not move h_X). Expected: VERIFIED, no rank violation, training error → 0.

    python examples/two_phase_digits.py --out bench/results/experiments     # 3 seeds
    python examples/two_phase_digits.py --quick --seeds 0 --out /tmp/tp
"""
from __future__ import annotations

import functools
import math
import time

try:
    from examples import _common as C
except ImportError:
    import _common as C

FULL = {"n_train": 1000, "epochs": 40, "batch_size": 64, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-5,
        "tau0": 0.6, "delta0": 1e-3, "rank_samples": 8, "rank_checks": 4, "width_factor": 1.1}
QUICK = {"n_train": 300, "epochs": 40, "batch_size": 64, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-5,
         "tau0": 0.6, "delta0": 1e-3, "rank_samples": 4, "rank_checks": 2, "width_factor": 1.1}


def make_model(n: int, seed: int, width_factor: float = 1.1):
    """LeNet for 8×8 inputs with a fully connected last hidden layer of ⌈1.1 n⌉ softplus units before the head."""
    from torch import nn

    import gconv.models as M
    from gconv.models._base import FeatureModel, seeded
    from gconv.nn import Softplus

    class LeNetWide(FeatureModel):
        def __init__(self):
            super().__init__()
            base = M.LeNet(1, 10, 8, seed=seed)
            H = math.ceil(width_factor * n)
            with seeded(seed + 7919):
                self.trunk = nn.Sequential(base.trunk, nn.Linear(base.feature_dim, H), Softplus(100.0))
                self.head = nn.Linear(H, 10)
    return LeNetWide()


def expressivity_check(model, X) -> dict:
    """Seeds 002/003, Assumption 1: certify rank [h_X(w), 1_n] = n with gconv.linalg (a floating-point proof)."""
    import torch

    from gconv.linalg import ActivatedFeatures, certify_full_row_rank
    t0 = time.perf_counter()
    lenet, lin = model.trunk[0], model.trunk[1]
    was = model.training
    model.eval()
    with torch.no_grad():
        Z = lenet(X).double()
    model.train(was)
    A = ActivatedFeatures(Z, lin.weight.detach().double().t(), lin.bias.detach().double(), "softplus", zeta=100.0)
    cert = certify_full_row_rank(A, progress=False)
    verdict = ("VERIFIED" if cert.certified_full_rank else
               "NOT VERIFIED" if cert.certified_rank_deficient else "INCONCLUSIVE")
    return {"condition": "expressivity (seeds 002/003, Assumption 1): rank [h_X, 1_n] = n", "verdict": verdict,
            "n": A.shape[0], "D": A.shape[1], "sigma_min_lower": cert.sigma_min_lower,
            "sigma_max_upper": cert.sigma_max_upper,
            "relative_margin": (cert.sigma_min_lower / cert.sigma_max_upper)
            if (cert.sigma_min_lower and cert.sigma_max_upper) else None,
            "methods": [m.method + ":" + m.outcome for m in cert.methods], "summary": cert.summary(),
            "seconds": time.perf_counter() - t0}


def run_seed(seed: int, cfg: dict, train, test, progress=False) -> dict:
    import torch
    from torch import nn

    from examples.digits_ee import _error
    from gconv.train import TwoPhase
    X, Y = train
    model = make_model(X.shape[0], seed, cfg["width_factor"])
    checks = {"init": expressivity_check(model, X)}
    sgd = functools.partial(torch.optim.SGD, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    per_epoch = -(-X.shape[0] // cfg["batch_size"])
    T = cfg["epochs"] * per_epoch
    tau = max(1, round(cfg["tau0"] * T))
    rank_data = (X[:cfg["rank_samples"]], Y[:cfg["rank_samples"]])
    tp = TwoPhase(model, sgd, tau=tau, total_steps=T, delta0=cfg["delta0"], mode="last_layer", data=rank_data,
                  check_every=max(1, (T - tau) // cfg["rank_checks"]), on_violation="warn", seed=seed)
    tp.on_switch = lambda t: checks.__setitem__("switch", expressivity_check(t.model, X))
    curve = [[0, _error(model, X, Y), _error(model, *test)]]

    def cb(t, rec):
        if t.t % per_epoch == 0:
            curve.append([t.t // per_epoch, _error(t.model, X, Y), _error(t.model, *test)])
    t0 = time.perf_counter()
    res = tp.fit((X, Y), nn.CrossEntropyLoss(), steps=T, batch_size=cfg["batch_size"], eval_every=None,
                 show_progress=progress, callback=cb)
    return {"seed": seed, "train_error": _error(model, X, Y), "test_error": _error(model, *test),
            "final_loss": res.final["loss"], "tau_steps": tau, "T_steps": T, "width": model.head.in_features,
            "perturbation": {k: v for k, v in tp.perturbation.items() if k != "sigma"},
            "reference_rank": tp.reference_rank, "rank_history": tp.rank_history, "violations": tp.violations,
            "rank_samples": cfg["rank_samples"], "expressivity": checks, "curve": curve,
            "feature_cache": res.feature_cache, "seconds": time.perf_counter() - t0}


def figure(path, runs, cfg):
    plt = C.pyplot()
    import numpy as np
    col = C.seed_colors([r["seed"] for r in runs])
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.5))
    for r in runs:
        c = np.array(r["curve"], dtype=float)
        ax[0].plot(c[:, 0], 100 * c[:, 1], color=col[r["seed"]], label=f"seed {r['seed']}: training error")
        ax[0].plot(c[:, 0], 100 * c[:, 2], color=col[r["seed"]], ls="--", label=f"seed {r['seed']}: test error")
        hist = [h for h in r["rank_history"]]
        ax[1].plot([h["step"] for h in hist], [h["rank"] for h in hist], "o-", color=col[r["seed"]],
                   label=f"seed {r['seed']}: rank K(w^k)")
    per_epoch = runs[0]["T_steps"] / cfg["epochs"]
    tau_ep = runs[0]["tau_steps"] / per_epoch
    ax[0].axvline(tau_ep, color="k", lw=0.8)
    ax[0].text(tau_ep, 95, " τ: perturb, then last layer only", va="top")
    ax[0].set(xlabel="epoch", ylabel="error (%)", ylim=(-1, 100), title="Two-phase training (phase 2: last layer)")
    ax[0].legend(fontsize=7)
    full = cfg["rank_samples"] * 10
    ax[1].axhline(full, color="gray", ls=":", label=f"n·m_y = {full}")
    ax[1].set(xlabel="step k (phase 2)", ylabel="rank K(w^k), K = J Jᵀ over all layers",
              title=f"Rank checks on {cfg['rank_samples']} training samples (first: w^τ)")
    ax[1].set_ylim(0, full * 1.1)
    ax[1].legend(fontsize=8)
    ver = ", ".join(f"seed {r['seed']}: {r['expressivity']['init']['verdict']}/{r['expressivity']['switch']['verdict']}"
                    for r in runs)
    fig.suptitle(f"Seed 003 Algorithm 1 on digits (n = {cfg['n_train']}, last hidden width ⌈1.1n⌉ = "
                 f"{runs[0]['width']}); expressivity at init/τ — {ver}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args, cfg = C.start(__doc__, QUICK, FULL, argv)
    from examples.digits_ee import _split
    train, test = _split(cfg)

    def describe(r):
        e = r["expressivity"]
        return (f"seed {r['seed']}: training error {100 * r['train_error']:.1f} %, test error "
                f"{100 * r['test_error']:.1f} %, loss {r['final_loss']:.3g}; expressivity {e['init']['verdict']} / "
                f"{e['switch']['verdict']} (σ_min/σ_max ≥ {e['switch']['relative_margin'] or 0:.1e}); rank K(w^τ) = "
                f"{r['reference_rank']}, violations {len(r['violations'])} [{r['seconds']:.0f} s]")

    return C.run_experiment(args, "two_phase_digits", cfg,
                            "5: two-phase on digits + expressivity (seeds 002/003, Algorithm 1, Assumption 1)",
                            [{"seed": s} for s in args.seeds],
                            lambda job: run_seed(job["seed"], cfg, train, test, args.progress), describe,
                            figure=lambda png, runs: figure(png, runs, cfg))


if __name__ == "__main__":
    main()
