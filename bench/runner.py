"""``python -m bench run``: every suite (one ``bench/bench_<name>.py`` file = one suite), one results file.

Each suite runs in its own pytest process (pytest-benchmark on CPU, triton do_bench on CUDA; see
bench/conftest.py), so memory and a crash stay with that suite; the roofline probes run once first.
Results go to ``bench/results/<device-name>/<UTC timestamp>.json`` after every suite (a stopped run keeps
what it measured):  the device (name, driver, CPU model), versions, the roofline, and per suite every
test's median with its quartiles, parameters, outcome (skip reasons included), peak memory and extra_info.
Ratios and roofline fractions are derived from those by :func:`analyze`.
"""
from __future__ import annotations

import datetime as _dt
import glob
import json
import os
import random
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
SCHEMA = "gconv-bench/1"


class BenchError(RuntimeError):
    """A run or report that cannot give a correct answer (unknown suite, missing baseline, no device)."""


class MissingBaselineError(BenchError):
    pass


def discover(bench_dir: str = BENCH_DIR) -> dict:
    """{suite name: path} for every bench_<name>.py in ``bench_dir``."""
    out = {}
    for p in sorted(glob.glob(os.path.join(bench_dir, "bench_*.py"))):
        out[os.path.basename(p)[len("bench_"):-3]] = p
    return out


def slug(s: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in s.lower()).split())[:60] or "unknown"


def device_info(device: str) -> dict:
    """Name, driver and facts of the measured device (CPU model for cpu)."""
    from gconv._utils import environment
    env = environment()
    if device == "cuda":
        import torch
        if not torch.cuda.is_available():
            why = "torch is a CPU build" if torch.version.cuda is None else "no CUDA device is visible"
            raise BenchError(f"--device cuda: {why}")
        p = torch.cuda.get_device_properties(0)
        driver = None
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except Exception as exc:                           # noqa: BLE001 (driver is informative only)
            driver = f"unknown ({type(exc).__name__})"
        return {"kind": "cuda", "name": p.name, "driver": driver, "cuda_runtime": torch.version.cuda,
                "memory_bytes": p.total_memory, "multiprocessors": p.multi_processor_count,
                "capability": f"{p.major}.{p.minor}", "cpu": env["cpu"]}
    import torch
    return {"kind": "cpu", "name": env["cpu"], "driver": None, "cpu": env["cpu"], "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _run_suite(name, path, device, mode, seed, timeout, extra_args=(), log=print, threads=None):
    rec = tempfile.NamedTemporaryFile(prefix=f"gconv-bench-{name}-", suffix=".json", delete=False)
    rec.close()
    env = dict(os.environ, GCONV_BENCH_RECORD=rec.name, GCONV_BENCH_DEVICE=device, GCONV_BENCH_MODE=mode,
               GCONV_BENCH_SEED=str(seed), GCONV_BENCH_THREADS=str(threads or ""), PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", path, "-v", "-p", "no:cacheprovider", "--rootdir", ROOT,
           "-o", "addopts=", *extra_args]
    cmd += ["-p", "no:benchmark"] if device == "cuda" else ["--benchmark-columns=median,iqr,rounds"]
    if not os.path.exists(os.path.join(os.path.dirname(path), "conftest.py")):
        cmd += ["-p", "bench.plugin"]          # a suite outside bench/ (tests) gets the plugin explicitly
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = t0 + timeout if timeout else None
    timed_out = False
    import threading

    def pump():
        for line in proc.stdout:
            lines.append(line)
            if " PASSED" in line or " SKIPPED" in line or " FAILED" in line or " ERROR" in line:
                log(f"[bench]     {time.perf_counter() - t0:6.0f} s  {line.split('::', 1)[-1].rstrip()}")
    th = threading.Thread(target=pump, daemon=True)
    th.start()
    try:
        while True:
            try:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            except ChildProcessError:
                status, usage = 0, None
                break
            if pid != 0:
                break
            if deadline and time.perf_counter() > deadline:
                proc.kill()
                timed_out = True
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
    except BaseException:              # interrupted (Ctrl-C, SIGTERM via __main__): take the suite down too
        proc.kill()
        proc.wait()
        raise
    th.join(timeout=5)
    rc = os.waitstatus_to_exitcode(status) if usage is not None else proc.returncode
    out = {"path": os.path.relpath(path, ROOT), "returncode": rc, "seconds": time.perf_counter() - t0,
           "peak_rss_bytes": usage.ru_maxrss * 1024 if usage is not None else None, "timed_out": timed_out,
           "output_tail": "".join(lines)[-3000:]}
    try:
        with open(rec.name) as fh:
            got = json.load(fh)
        out["records"], out["declarations"] = got["records"], got["modules"].get(f"bench_{name}", {})
    except (OSError, ValueError):
        out["records"], out["declarations"] = [], {}
    finally:
        os.unlink(rec.name)
    return out


def run(suites=None, device="cpu", mode="quick", bench_dir=BENCH_DIR, results_dir=RESULTS_DIR, roofline=None,
        timeout=None, seed=None, log=print, extra_args=(), threads=None) -> str:
    """Run the named suites (default: all discovered) and return the results file's path.

    ``roofline``: kwargs for :func:`bench.roofline.measure`, or False to skip the probes (tests).
    ``threads``: torch intra-op threads in the suites and the probes (default: torch's default).
    """
    from gconv._utils import environment, to_jsonable
    found = discover(bench_dir)
    names = list(found) if not suites else list(suites)
    unknown = [s for s in names if s not in found]
    if unknown:
        raise BenchError(f"unknown suite(s) {unknown}; the suites in {bench_dir} are {sorted(found)}")
    if mode not in ("quick", "default", "full"):
        raise BenchError(f"mode must be quick, default or full, got {mode!r}")
    if threads:
        import torch
        torch.set_num_threads(int(threads))
    dev = device_info(device)
    seed = random.SystemRandom().randrange(2**31) if seed is None else int(seed)
    stamp = _dt.datetime.now(_dt.timezone.utc)
    path = os.path.join(results_dir, slug(dev["name"]), stamp.strftime("%Y-%m-%dT%H%M%SZ") + ".json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    result = {"schema": SCHEMA, "date": stamp.isoformat(timespec="seconds"), "mode": mode, "device": dev,
              "seed": seed, "threads": threads, "environment": environment(), "load_average_before": os.getloadavg(),
              "roofline": None, "suites": {}}

    def save():
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(to_jsonable(result), fh, indent=1)
        os.replace(tmp, path)

    t0 = time.perf_counter()
    if roofline is not False:
        from bench.roofline import measure
        log(f"[bench] roofline probes on {dev['name']} ...")
        result["roofline"] = measure(device, **(roofline or {}))
        r = result["roofline"]
        log(f"[bench]   copy {r['copy_Bps'] / 1e9:.1f} GB/s; GEMM " +
            ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in r["gemm_flops"].items()))
    save()
    for name in names:
        log(f"[bench] suite {name} ({mode}, {device}) ...")
        s = _run_suite(name, found[name], device, mode, seed, timeout, extra_args, log, threads)
        result["suites"][name] = s
        counts = {}
        for r in s["records"]:
            counts[r.get("outcome", "?")] = counts.get(r.get("outcome", "?"), 0) + 1
        log(f"[bench]   {name}: rc {s['returncode']}, {s['seconds']:.0f} s, peak RSS "
            f"{(s['peak_rss_bytes'] or 0) / 2**30:.2f} GiB, {counts}")
        if s["returncode"] not in (0, 5):
            log(s["output_tail"])
        save()
    result["seconds"] = time.perf_counter() - t0
    result["load_average_after"] = os.getloadavg()
    save()
    log(f"[bench] wrote {os.path.relpath(path, ROOT)} ({result['seconds']:.0f} s)")
    return path


# ------------------------------------------------------------------ analysis of one results file
def _key(params, drop):
    return tuple(sorted((k, str(v)) for k, v in params.items() if k != drop))


def baselines_for(decl, function):
    """(param, baseline values) declared for ``function``: ``BENCH_BASELINES`` is either
    ``{param: (values...)}`` for the whole suite or ``{test_function: {param: (values...)}}``."""
    decl = decl or {}
    if decl and all(k.startswith("test_") for k in decl):
        decl = decl.get(function) or {}
    if len(decl) > 1:
        raise BenchError(f"BENCH_BASELINES for {function} must name one parameter, got {sorted(decl)}")
    return next(iter(decl.items())) if decl else (None, ())


def analyze(result: dict) -> dict:
    """{suite: [row]} with, per measured record, ratios vs each declared baseline (baseline median /
    this median: > 1 means faster than the baseline) and the roofline fraction.

    A suite declares ``BENCH_BASELINES`` (see :func:`baselines_for`); rows whose ``param`` takes
    another value are compared with the record of each baseline value that has the same other parameters
    (same test function).  A baseline that was skipped gives no ratio (its reason is kept); one with no
    measured result (absent, failed, or timed out) raises :class:`MissingBaselineError` naming it.
    """
    from bench.roofline import fraction
    out, missing = {}, []
    roof = result.get("roofline")
    for sname, suite in result.get("suites", {}).items():
        decl = (suite.get("declarations") or {}).get("baselines")
        recs = suite.get("records", [])
        index = {}
        for r in recs:
            param, _ = baselines_for(decl, r["function"])
            if param is not None and param in r["params"]:
                index[(r["function"], _key(r["params"], param), str(r["params"][param]))] = r
        rows = []
        for r in recs:
            row = {"record": r, "ratios": {}, "fraction": None, "bound": None}
            param, bases = baselines_for(decl, r["function"])
            if r.get("stats"):
                row["fraction"], row["bound"] = fraction(r, roof)
            if param is not None and param in r["params"] and str(r["params"][param]) not in map(str, bases) \
                    and r.get("stats"):
                for b in bases:
                    br = index.get((r["function"], _key(r["params"], param), str(b)))
                    if br is not None and br.get("stats"):
                        row["ratios"][str(b)] = br["stats"]["median"] / r["stats"]["median"]
                    elif br is not None and br.get("outcome") == "skipped":
                        row["ratios"][str(b)] = {"skipped": br.get("reason")}
                    else:
                        what = "absent" if br is None else (br.get("outcome") or "not measured")
                        missing.append(f"suite {sname}: baseline {param}={b} for {r['function']} "
                                       f"{dict(_key(r['params'], param))} is {what}")
            rows.append(row)
        out[sname] = rows
    if missing:
        raise MissingBaselineError("missing baseline result(s) — a ratio needs its baseline measured in the "
                                   "same run:\n  " + "\n  ".join(dict.fromkeys(missing)))
    return out
