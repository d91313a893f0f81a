"""End-to-end certification of the safe-exploration (or expressivity) condition at MNIST scale on CPU.

    python bench/rank_60k.py                          # n = 60,000, φ = S ⊙ Z (m_{H−1} = 513, m_H = 234)
    python bench/rank_60k.py --n 16000                # a smaller run with the same code path
    python bench/rank_60k.py --shape expressivity --n 8000

Features: real digits (scikit-learn's 1,797, upsampled to 28×28, augmented by shifts and noise up to n)
through a random softplus(100) conv net (:mod:`gconv.linalg.testing`), cached in the checkpoint
directory.  The certificate uses a checkpoint directory, so a killed run continues where it stopped
when the same command is run again, and gives the identical certificate.  Writes
bench/results/rank_<shape>_<n>_cpu.json: wall times, peak RSS, the certificate, the machine.

Targets (issue 3): n = 60,000 safe-exploration ≤ 25 min and ≤ 20 GiB peak RSS on 2 cores.
Needs ~15.5 GiB of RAM at n = 60,000 (the packed float64 factor is 14.4 GB) and ~15 GB of disk for
the checkpoint; run it when the machine is otherwise idle.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=60000)
    ap.add_argument("--shape", choices=("safe", "expressivity"), default="safe")
    ap.add_argument("--memory-budget", default="20GiB")
    ap.add_argument("--checkpoint-dir", default=None, help="default: /tmp/gconv-rank-<shape>-<n>")
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    import gconv.linalg as L
    from gconv._utils import environment, format_bytes
    from gconv.linalg.testing import digit_features

    n = args.n
    ck = args.checkpoint_dir or f"/tmp/gconv-rank-{args.shape}-{n}"
    os.makedirs(ck, exist_ok=True)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"rank_{args.shape}_{n}_cpu.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)

    t0 = time.perf_counter()
    fpath = os.path.join(ck, "features.npy")
    if os.path.exists(fpath):
        Z = np.load(fpath)
    else:
        Z = digit_features(n)
        np.save(fpath + ".tmp.npy", Z)
        os.replace(fpath + ".tmp.npy", fpath)
    t_feat = time.perf_counter() - t0
    if args.shape == "safe":
        mH = math.ceil(2 * n / Z.shape[1])
        q = np.random.default_rng(1).standard_normal((Z.shape[1], mH))
        S = 1.0 / (1.0 + np.exp(-(Z @ q)))
        A = L.KhatriRao(S, Z)
        shape = {"m_H": mH, "m_H-1": Z.shape[1], "D": A.D}
    else:
        width = math.ceil(1.1 * n)
        rng = np.random.default_rng(2)
        W = rng.standard_normal((Z.shape[1] - 1, width)) * math.sqrt(2.0 / (Z.shape[1] - 1))
        A = L.ActivatedFeatures(Z[:, :-1], W, np.zeros(width), "softplus")
        shape = {"width": width, "D": A.D}
    print(f"[rank_60k] n = {n}, {args.shape}: {shape}; features {t_feat:.1f} s", file=sys.stderr)

    t1 = time.perf_counter()
    cert = L.certify_full_row_rank(A, memory_budget=args.memory_budget, checkpoint_dir=os.path.join(ck, "cert"),
                                   block_size=args.block_size, progress=not args.no_progress)
    t_cert = time.perf_counter() - t1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    res = {
        "n": n, "shape": args.shape, **shape,
        "status": cert.status.value, "sigma_min_lower": cert.sigma_min_lower, "sigma_max_upper": cert.sigma_max_upper,
        "feature_seconds": round(t_feat, 2), "certify_seconds": round(t_cert, 2),
        "peak_rss_bytes": peak, "peak_rss": format_bytes(peak),
        "certificate_peak_memory": format_bytes(cert.peak_memory_bytes),
        "resumed_from_column": next((m.details.get("resumed_from_column") for m in cert.methods
                                     if m.method == "gram_cholesky"), None),
        "targets": {"seconds": 25 * 60, "peak_rss_bytes": 20 * 2 ** 30} if n >= 60000 else None,
        "machine": environment(),
        "certificate": cert.to_dict(),
    }
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)
    print(f"[rank_60k] {cert.summary()}", file=sys.stderr)
    print(f"[rank_60k] certify {t_cert:.1f} s, peak RSS {format_bytes(peak)} -> {out}", file=sys.stderr)
    return 0 if cert.certified_full_rank else 1


if __name__ == "__main__":
    sys.exit(main())
