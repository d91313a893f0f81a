"""python -m bench {run,report,list}: the gconv benchmark suite (docs/benchmarks.md)."""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import runner  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run suites; write bench/results/<device>/<date>.json")
    r.add_argument("--suite", default=None, help=f"comma-separated subset of {sorted(runner.discover())}")
    r.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    g = r.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="mode", action="store_const", const="quick", help="< 10 min on 2 CPU cores")
    g.add_argument("--full", dest="mode", action="store_const", const="full", help="includes n = 60,000 (hours on CPU)")
    r.set_defaults(mode="default")
    r.add_argument("--seed", type=int, default=None, help="input seed (default: fresh, recorded)")
    r.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (1 steadies timings on a shared, loaded machine)")
    r.add_argument("--timeout", type=float, default=None, help="seconds per suite (killed beyond)")
    r.add_argument("--results-dir", default=runner.RESULTS_DIR)
    r.add_argument("--no-roofline", action="store_true")
    r.add_argument("--report", action="store_true", help="render bench/REPORT.md afterwards")
    p = sub.add_parser("report", help="render bench/REPORT.md from stored results")
    p.add_argument("--results-dir", default=runner.RESULTS_DIR)
    p.add_argument("--out", default=None)
    sub.add_parser("list", help="list the suites")
    a = ap.parse_args(argv)
    import signal
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:      # `timeout` / a scheduler stopping the run:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # unwind, so the running suite is killed too
    try:
        if a.cmd == "list":
            for name, path in runner.discover().items():
                print(f"{name:12s} {os.path.relpath(path, ROOT)}")
            return 0
        if a.cmd == "run":
            suites = [s.strip() for s in a.suite.split(",") if s.strip()] if a.suite else None
            path = runner.run(suites, a.device, a.mode, results_dir=a.results_dir, timeout=a.timeout, seed=a.seed, threads=a.threads,
                              roofline=False if a.no_roofline else None)
            import json
            with open(path) as fh:
                res = json.load(fh)
            bad = [n for n, s in res["suites"].items() if s["returncode"] not in (0, 5)]
            if a.report:
                from bench.report import REPORT, render
                render(a.results_dir)
                print("wrote", os.path.relpath(REPORT, ROOT))
            else:
                runner.analyze(res)            # a missing baseline is an error now, not at report time
            if bad:
                print(f"suite(s) with failures: {bad}", file=sys.stderr)
                return 1
            return 0
        from bench.report import REPORT, render
        out = a.out or REPORT
        render(a.results_dir, out)
        print("wrote", os.path.relpath(out, ROOT) if out.startswith(ROOT) else out)
        return 0
    except runner.BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
