"""`gconv verify safe-exploration` end to end at MNIST scale (seed 000, Table 2: n = 60,000, m_H = 234).

    python bench/verify_60k.py                         # n = 60,000 (≈ 16 GiB RAM, ≈ 15 GB disk, run on an idle machine)
    python bench/verify_60k.py --n 8000                # the same code path, smaller
    python bench/verify_60k.py --device cuda           # GPU: features and the dense certificate route

Realistic 28×28 handwritten digits ("digits28", gconv.data) through the pre-activation ResNet-18 with
softplus(100) (gconv.models, seed 1, eval mode), z = [z̄, 1] ∈ R^513, q ~ N(0,1) (seed 1) — the public
:func:`gconv.verify.safe_exploration`.  Features are cached in the checkpoint directory and the
certificate checkpoints its finished block columns, so a killed run resumes where it stopped when the
same command is run again.  Writes bench/results/verify_safe_<n>_<device>.json: the report (verdict,
certificate, time split features / gate / Gram + Cholesky), peak RSS, the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=60000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--memory-budget", default="20GiB")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--checkpoint-dir", default=None, help="default: /tmp/gconv-verify-safe-<n>")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    import numpy as np
    import torch
    import gconv.data as D
    import gconv.models as M
    import gconv.verify as V
    from gconv._utils import environment, peak_rss_bytes
    dev = a.device or "cpu"
    ck = a.checkpoint_dir or f"/tmp/gconv-verify-safe-{a.n}"
    os.makedirs(ck, exist_ok=True)
    feat_path = os.path.join(ck, "features.npy")
    meta_path = os.path.join(ck, "features.json")
    progress = not a.no_progress
    t0 = time.perf_counter()
    if os.path.exists(feat_path) and os.path.exists(meta_path):
        Zbar = torch.from_numpy(np.load(feat_path))
        with open(meta_path) as fh:
            fmeta = json.load(fh)
        fmeta["cached"] = True
    else:
        data = D.load("builtin:digits28", n=a.n, seed=0)
        model = M.resnet18(1, 10, seed=a.seed)
        tim = {}
        Zbar = V.extract_features(model, data, batch_size=a.batch_size, device=a.device, progress=progress,
                                  timings=tim, memory_budget=a.memory_budget)
        np.save(feat_path, Zbar.numpy())
        fmeta = {"features_seconds": tim["features"], "model": "resnet18 (pre-activation, softplus 100), seed "
                 f"{a.seed}, eval mode", "data": f"builtin:digits28 n={a.n}", "cached": False}
        with open(meta_path, "w") as fh:
            json.dump(fmeta, fh)
    rep = V.safe_exploration(Zbar, seed=a.seed, memory_budget=a.memory_budget, device=a.device,
                             checkpoint_dir=os.path.join(ck, "certificate"), progress=progress)
    rep.timings["features"] = fmeta["features_seconds"]      # from the run that computed them (cached after)
    rep.timings["total"] = rep.timings["total"] + fmeta["features_seconds"]
    rep.inputs.update(model=fmeta["model"], data=fmeta["data"], features_cached=fmeta["cached"],
                      dtype="float32 model, features upcast to float64")
    print(rep.summary())
    out = a.out or os.path.join(ROOT, "bench", "results", f"verify_safe_{a.n}_{dev}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump({"machine": environment(), "wall_seconds_this_run": time.perf_counter() - t0,
                   "peak_rss_bytes": peak_rss_bytes(), "report": rep.to_dict()}, fh, indent=1)
    print(f"results: {out}")
    return rep.verdict.exit_code


if __name__ == "__main__":
    sys.exit(main())
