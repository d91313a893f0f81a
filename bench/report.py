"""``python -m bench report``: stored results → bench/REPORT.md, PNG plots and regression flags.

For every device directory under bench/results/ the newest results file is reported: the machine, the
roofline, then one table per suite (median time with its interquartile range, each ratio vs the
suite's baselines measured in the same run, the fraction of the roofline bound, peak memory), and the
plots the suite declares in ``BENCH_PLOTS``.  A result is flagged as a regression when its median is
worse than the same test's median in the previous stored file for that device and mode by more than
the measured spread: ``new − old > max(IQR_new, IQR_old)``; with fewer than 3 rounds on either side the
spread is unmeasured and 10 % of the old median stands in for it.
"""
from __future__ import annotations

import glob
import json
import os

from bench.runner import RESULTS_DIR, ROOT, SCHEMA, BenchError, analyze, baselines_for

REPORT = os.path.join(ROOT, "bench", "REPORT.md")
MIN_ROUNDS_FOR_SPREAD = 3
UNMEASURED_SPREAD = 0.10
LOADED = 1.25          # load average per core above which a CPU run is marked as measured on a loaded machine


def load(results_dir: str = RESULTS_DIR) -> dict:
    """{device dir: [(path, result), ...] oldest first} for every results file of this schema."""
    out = {}
    for p in sorted(glob.glob(os.path.join(results_dir, "*", "*.json"))):
        try:
            with open(p) as fh:
                r = json.load(fh)
        except (OSError, ValueError):
            continue
        if isinstance(r, dict) and r.get("schema") == SCHEMA:
            out.setdefault(os.path.basename(os.path.dirname(p)), []).append((p, r))
    for v in out.values():
        v.sort(key=lambda pr: pr[1]["date"])
    return out


def regressions(new: dict, history: list) -> dict:
    """{(suite, test): {old, new, spread, old_date}} for results worse than the latest earlier measurement
    of the same test in the same mode and thread setting."""
    flags = {}
    for sname, suite in new.get("suites", {}).items():
        for r in suite.get("records", []):
            st = r.get("stats")
            if not st:
                continue
            for _, old in reversed(history):
                if old.get("mode") != new.get("mode") or old.get("threads") != new.get("threads"):
                    continue                      # quick and default share test ids at different sizes
                ost = next((x.get("stats") for x in old.get("suites", {}).get(sname, {}).get("records", [])
                            if x["test"] == r["test"] and x.get("stats")), None)
                if ost is None:
                    continue
                if min(st["rounds"], ost["rounds"]) < MIN_ROUNDS_FOR_SPREAD:
                    spread = max(st["iqr"], ost["iqr"], UNMEASURED_SPREAD * ost["median"])
                else:
                    spread = max(st["iqr"], ost["iqr"])
                if st["median"] - ost["median"] > spread:
                    flags[(sname, r["test"])] = {"old": ost["median"], "new": st["median"], "spread": spread,
                                                 "old_date": old["date"]}
                break
    return flags


def headline(res: dict, rows_by_suite: dict) -> list:
    """Per (suite, test function, compared value, baseline): the geometric mean, min and max of the ratios."""
    import math
    out = {}
    for sname, rows in rows_by_suite.items():
        decl = (res["suites"][sname].get("declarations") or {}).get("baselines")
        for row in rows:
            r = row["record"]
            param, _ = baselines_for(decl, r["function"])
            for b, v in row["ratios"].items():
                if isinstance(v, (int, float)) and v > 0:
                    out.setdefault((sname, r["function"], str(r["params"].get(param)), b), []).append(v)
    return [{"suite": k[0], "function": k[1], "variant": k[2], "baseline": k[3], "cases": len(v),
             "geomean": math.exp(sum(map(math.log, v)) / len(v)), "min": min(v), "max": max(v)}
            for k, v in out.items()]


def _t(s):
    if s is None:
        return "—"
    for unit, f in (("s", 1), ("ms", 1e3), ("µs", 1e6)):
        if s * f >= 1:
            return f"{s * f:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def _b(n):
    if n is None:
        return "—"
    from gconv._utils import format_bytes
    return format_bytes(max(int(n), 0))


def _case(params, drop=()):
    return ", ".join(f"{k}={v}" for k, v in params.items() if k not in drop) or "—"


def plot(rows, spec, out_png, device_name) -> bool:
    """One PNG: median (with IQR bars) vs spec['x'], a line per spec['series'] value, records filtered
    by spec.get('where') and spec.get('function')."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    series = {}
    for row in rows:
        r = row["record"]
        p, st = r["params"], r.get("stats")
        if not st or spec["x"] not in p or (spec.get("function") and r["function"] != spec["function"]):
            continue
        if any(str(p.get(k)) != str(v) for k, v in (spec.get("where") or {}).items()):
            continue
        label = " ".join(str(p.get(s)) for s in ([spec["series"]] if isinstance(spec["series"], str) else spec["series"]))
        series.setdefault(label, []).append((float(p[spec["x"]]), st["median"], st["q1"], st["q3"]))
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, pts in sorted(series.items()):
        pts.sort()
        xs = [x for x, *_ in pts]
        ax.errorbar(xs, [m for _, m, _, _ in pts], yerr=[[m - lo for _, m, lo, _ in pts], [hi - m for _, m, _, hi in pts]],
                    marker="o", capsize=3, label=label)
    ax.set_xscale("log" if spec.get("logx", True) else "linear")
    ax.set_yscale("log" if spec.get("logy", True) else "linear")
    ax.set_xlabel(spec.get("xlabel", spec["x"]))
    ax.set_ylabel("median time [s]")
    ax.set_title(f"{spec.get('title', spec['name'])}\n{device_name}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(out_png), exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return True


def render(results_dir: str = RESULTS_DIR, out: str = REPORT, devices=None) -> str:
    """Write the report (and its plots beside it, in <out dir>/report/) and return its text."""
    data = load(results_dir)
    if devices:
        data = {k: v for k, v in data.items() if k in devices}
    if not data:
        raise BenchError(f"no results of schema {SCHEMA} under {results_dir}: run `python -m bench run` first")
    base = os.path.dirname(os.path.abspath(out))
    lines = ["# gconv benchmark report", "",
             "Generated by `python -m bench report` from bench/results/ (newest file per device). Ratios are "
             "*baseline median / gconv median* measured in the same run (> 1: gconv is faster). Absolute times "
             "hold for the stated device only. Roofline: fraction of the copy bandwidth or GEMM rate measured "
             "at the start of the same run (bytes/flops counted in each benchmark's docstring). A ⚠ marks a "
             "regression against the previous stored result on the same device beyond the measured spread "
             f"(max of the two IQRs; 10 % of the old median where a side has < {MIN_ROUNDS_FOR_SPREAD} rounds).",
             ""]
    for dev, hist in sorted(data.items()):
        path, res = hist[-1]
        rows_by_suite = analyze(res)
        flags = regressions(res, hist[:-1])
        d, env = res["device"], res["environment"]
        lines += [f"## {d['name']} ({d['kind']})", "",
                  f"Results: `{os.path.relpath(path, base)}` — {res['date']}, mode **{res['mode']}**, "
                  f"{res.get('seconds', 0) / 60:.1f} min, seed {res['seed']}, load average before "
                  f"{', '.join(f'{x:.2f}' for x in res.get('load_average_before', []))}.", "",
                  f"torch {env.get('torch')}, triton {env.get('triton')}, numpy {env.get('numpy')}, scipy "
                  f"{env.get('scipy')}, gconv {env.get('gconv')}, python {env.get('python')}; CPU {env.get('cpu')} "
                  f"({env.get('cpu_count')} cores, {d.get('torch_threads', env.get('torch_threads'))} torch threads)"
                  + (f"; driver {d['driver']}, CUDA {d.get('cuda_runtime')}" if d.get("driver") else "") + ".", ""]
        loadavg = max(list(res.get("load_average_before") or [0])[:1] + list(res.get("load_average_after") or [0])[:1])
        cores = env.get("cpu_count") or 1
        if d["kind"] == "cpu" and loadavg > LOADED * cores:
            lines += [f"> **Loaded machine**: load average {loadavg:.1f} on {cores} cores during this run (other "
                      "processes competing for the cores). Times, ratios and regression flags here reflect that "
                      "contention as much as the code; rerun on an idle machine before drawing conclusions.", ""]
        roof = res.get("roofline")
        if roof:
            lines += ["| roofline probe | median | rate |", "|---|---|---|",
                      f"| copy {_b(roof['copy_size_bytes'])} | {_t(roof['copy']['median'])} ± {_t(roof['copy']['iqr'])} "
                      f"| {roof['copy_Bps'] / 1e9:.1f} GB/s |"]
            for k, st in roof["gemm"].items():
                lines.append(f"| GEMM {k} {st['n']}² | {_t(st['median'])} ± {_t(st['iqr'])} | "
                             f"{roof['gemm_flops'][k] / 1e9:.1f} GFLOP/s |")
            lines.append("")
        head = headline(res, rows_by_suite)
        if head:
            lines += ["**Headline** — gconv vs each baseline, per benchmark: geometric mean of the ratios over "
                      "its cases (min – max; > 1: gconv faster).", "",
                      "| suite | benchmark | gconv variant | baseline | cases | geo-mean ratio | min – max |",
                      "|---|---|---|---|---|---|---|"]
            for h in head:
                lines.append(f"| {h['suite']} | `{h['function']}` | {h['variant']} | {h['baseline']} | {h['cases']} | "
                             f"**{h['geomean']:.2f}** | {h['min']:.2f} – {h['max']:.2f} |")
            lines.append("")
        if flags:
            lines += [f"**{len(flags)} regression(s)** vs the previous stored result:", ""]
            for (s, t), f in flags.items():
                lines.append(f"- ⚠ `{t}`: {_t(f['old'])} ({f['old_date']}) → {_t(f['new'])} (spread {_t(f['spread'])})")
            lines.append("")
        else:
            lines += ["No regressions against earlier results on this device." if len(hist) > 1 else
                      "No earlier result on this device to compare with.", ""]
        for sname, rows in rows_by_suite.items():
            suite = res["suites"][sname]
            decl = suite.get("declarations") or {}
            lines += [f"### {sname}", "", f"{decl.get('doc', '')}", "",
                      f"`{suite['path']}`: exit {suite['returncode']}{' (timed out)' if suite.get('timed_out') else ''}, "
                      f"{suite['seconds']:.0f} s, process peak RSS {_b(suite.get('peak_rss_bytes'))}.", ""]
            if not decl.get("baselines"):
                lines += ["_This suite declares no `BENCH_BASELINES`: times only._", ""]
            skipped = []
            for fn in dict.fromkeys(row["record"]["function"] for row in rows):
                frows = [row for row in rows if row["record"]["function"] == fn]
                param, bases = baselines_for(decl.get("baselines"), fn)
                measured = [row for row in frows if row["record"].get("stats")]
                for row in frows:
                    r = row["record"]
                    if r.get("stats"):
                        continue
                    if r.get("outcome") == "failed":
                        skipped.append(f"`{fn}` {_case(r['params'])}: **failed** — "
                                       f"{(r.get('reason') or '').strip().splitlines()[-1][:200]}")
                    else:
                        skipped.append(f"`{fn}` {_case(r['params'])}: {r.get('outcome', 'not run')} — {r.get('reason')}")
                if not measured:
                    continue
                head = ["case", "median ± IQR", "rounds"] + [f"× {b}" for b in bases] + ["roofline", "peak mem", ""]
                lines += [f"`{fn}`" + (f" — ratios vs `{param}` baselines" if param else ""), "",
                          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                for row in measured:
                    r, st = row["record"], row["record"]["stats"]
                    spread = f" ± {_t(st['iqr'])}" if st["rounds"] >= 2 else ""
                    cells = [_case(r["params"]), f"{_t(st['median'])}{spread}", str(st["rounds"])]
                    for b in bases:
                        v = row["ratios"].get(str(b))
                        cells.append("" if v is None else ("skipped" if isinstance(v, dict) else f"**{v:.2f}**"))
                    cells.append("—" if row["fraction"] is None else f"{100 * row['fraction']:.1f} % {row['bound']}")
                    cells.append(_b(r.get("peak_bytes")))
                    cells.append("⚠" if (sname, r["test"]) in flags else "")
                    lines.append("| " + " | ".join(cells) + " |")
                lines.append("")
            if skipped:
                lines += ["Not measured:", ""] + [f"- {s}" for s in skipped] + [""]
            for spec in decl.get("plots") or []:
                png = os.path.join(base, "report", f"{dev}-{sname}-{spec['name']}.png")
                if plot(rows, spec, png, d["name"]):
                    lines += [f"![{spec.get('title', spec['name'])}]({os.path.relpath(png, base)})", ""]
    text = "\n".join(lines)
    with open(out, "w") as fh:
        fh.write(text)
    return text
