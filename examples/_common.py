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
    p.add_argument("--resume", action="store_true",
                   help="keep the runs already in <out>/<name>.json (same configuration) and do only the missing ones")
    return p


def start(doc: str, quick: dict, full: dict, argv=None):
    """Parse the standard arguments (first docstring line as description), set threads and the output
    folder up → (args, the configuration: ``quick`` with --quick, else ``full``)."""
    args = parser(doc.splitlines()[0], "out/experiments").parse_args(argv)
    setup(args)
    return args, dict(quick if args.quick else full)


def previous_runs(args, name: str, cfg: dict) -> list:
    """With ``--resume``: the runs of an earlier (possibly killed) invocation with the same configuration."""
    import json

    from gconv._utils import to_jsonable
    path = os.path.join(args.out, f"{name}.json")
    if not getattr(args, "resume", False) or not os.path.exists(path):
        return []
    with open(path) as fh:
        old = json.load(fh)
    if old.get("config") != to_jsonable(cfg):
        print(f"--resume: {path} has another configuration; starting afresh")
        return []
    print(f"--resume: keeping {len(old.get('runs', []))} finished run(s) from {path}")
    return list(old.get("runs", []))


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


def run_experiment(args, name: str, cfg: dict, experiment: str, jobs, run_one, describe, *, summary=None,
                   figure=None) -> dict:
    """The loop every experiment script shares: run each job not already finished (``--resume``), print a
    line per run, rewrite ``<out>/<name>.json`` after every run (a killed run keeps what it has), then the
    final JSON and ``<out>/<name>.png``.

    ``jobs``: dicts of the keys that identify a run in its record (e.g. ``{"seed": 0}``); ``run_one(job)``
    → the run's record (holding those keys); ``describe(record)`` → the line to print; ``summary(runs)``
    → the record's "summary"; ``figure(png_path, runs)`` draws the figure (None: no figure).
    """
    runs, t0 = previous_runs(args, name, cfg), time.perf_counter()

    def record():
        rec = {"experiment": experiment, "config": cfg, "runs": runs, "seconds": time.perf_counter() - t0}
        if summary is not None:
            rec["summary"] = summary(runs)
        return rec

    for job in jobs:
        if any(all(x.get(k) == v for k, v in job.items()) for x in runs):
            continue
        runs.append(run_one(job))
        print(describe(runs[-1]), flush=True)
        write_json(args, name, record())
    rec = record()
    write_json(args, name, rec)
    if figure is not None:
        png = os.path.join(args.out, f"{name}.png")
        figure(png, runs)
        print(f"wrote {png} and {os.path.join(args.out, name)}.json ({rec['seconds']:.0f} s)")
    return rec


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def seed_colors(seeds):
    return {s: f"C{i}" for i, s in enumerate(seeds)}
