"""Shared plumbing of the experiment scripts: arguments, JSON with the environment, figures."""
from __future__ import annotations

import argparse
import os
import sys
import time

# make `python examples/<script>.py` work from a checkout without installing gconv
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def parser(description: str, default_out: str, default_seeds=(0, 1, 2)) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=default_out, help=f"folder for the PNG and JSON (default {default_out})")
    p.add_argument("--seeds", type=int, nargs="+", default=list(default_seeds),
                   help=f"random seeds (default {' '.join(map(str, default_seeds))})")
    p.add_argument("--quick", action="store_true", help="a much smaller, faster version (for tests)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: tiny tensors)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def setup(args) -> None:
    import torch
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)


def write_json(args, name: str, record: dict) -> str:
    """Write ``record`` (+ arguments and environment) to ``<out>/<name>.json`` as strict JSON."""
    from gconv._utils import dumps, environment
    record = {**record, "arguments": {k: v for k, v in vars(args).items()},
              "environment": environment(), "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = os.path.join(args.out, f"{name}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(dumps(record, indent=1))
    os.replace(tmp, path)
    return path


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def seed_colors(seeds):
    return {s: f"C{i}" for i, s in enumerate(seeds)}
