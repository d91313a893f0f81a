"""The benchmark runner and report generator on a tiny synthetic suite (bench/runner.py, bench/report.py)."""
import json
import os
import textwrap

import pytest

from bench import report, runner

TOY = textwrap.dedent('''
    """Toy suite: a sleep-based 'gconv' against a slower 'eager' baseline."""
    import os, time
    import pytest

    BENCH_BASELINES = {"provider": ("eager",)}
    BENCH_PLOTS = [{"name": "scaling", "x": "n", "series": "provider", "title": "toy time vs n"}]
    SLOW = float(os.environ.get("TOY_SLOWDOWN", "1"))

    @pytest.mark.parametrize("provider", ["eager", "gconv"])
    @pytest.mark.parametrize("n", [1, 2])
    def test_toy(benchmark, provider, n, bench_mode, device):
        """bytes = 1e6·n (counted)."""
        assert bench_mode == "quick" and device == "cpu"
        dt = 0.002 * n * (2 if provider == "eager" else SLOW)
        benchmark.group = f"toy n={n}"
        benchmark.extra_info["bytes"] = 1e6 * n
        benchmark.pedantic(time.sleep, args=(dt,), rounds=5, warmup_rounds=1)

    def test_skipped(benchmark):
        pytest.skip("does not fit: planted skip")
''')


@pytest.fixture
def toy(tmp_path):
    d = tmp_path / "suites"
    d.mkdir()
    (d / "bench_toy.py").write_text(TOY)
    return d, tmp_path / "results"


def _run(d, res, **kw):
    kw.setdefault("roofline", dict(copy_bytes=1 << 20, gemm_n=64, reps=3))
    return runner.run(["toy"], "cpu", "quick", bench_dir=str(d), results_dir=str(res), log=lambda *a: None, **kw)


def test_run_report_and_regression(toy, tmp_path, monkeypatch):
    d, res = toy
    assert runner.discover(str(d)) == {"toy": str(d / "bench_toy.py")}
    p1 = _run(d, res, seed=7)
    r1 = json.load(open(p1))
    assert r1["schema"] == runner.SCHEMA and r1["seed"] == 7 and r1["device"]["kind"] == "cpu"
    assert r1["device"]["name"] and r1["environment"]["torch"] and r1["roofline"]["copy_Bps"] > 0
    assert os.path.dirname(p1) == str(res / runner.slug(r1["device"]["name"]))
    s = r1["suites"]["toy"]
    assert s["returncode"] == 0, s["output_tail"]
    recs = {r["test"].split("::")[-1]: r for r in s["records"]}
    assert recs["test_skipped"]["outcome"] == "skipped" and "planted skip" in recs["test_skipped"]["reason"]
    g = recs["test_toy[1-gconv]"]
    assert g["params"] == {"n": 1, "provider": "gconv"} and g["stats"]["rounds"] == 5
    assert 0.0015 < g["stats"]["median"] < 0.05 and g["stats"]["q1"] <= g["stats"]["median"] <= g["stats"]["q3"]
    assert g["peak_bytes"] is not None and g["extra_info"]["bytes"] == 1e6
    rows = {r["record"]["test"].split("::")[-1]: r for r in runner.analyze(r1)["toy"]}
    assert 1.2 < rows["test_toy[2-gconv]"]["ratios"]["eager"] < 4.0          # eager sleeps twice as long
    assert rows["test_toy[2-eager]"]["ratios"] == {}
    assert rows["test_toy[1-gconv]"]["bound"] == "copy bandwidth" and rows["test_toy[1-gconv]"]["fraction"] > 0

    out = tmp_path / "REPORT.md"
    text = report.render(str(res), str(out))
    assert out.exists() and "### toy" in text and "× eager" in text and "planted skip" in text
    assert "**Headline**" in text and "| toy | `test_toy` | gconv | eager | 2 |" in text
    assert "No earlier result" in text and "- ⚠" not in text and "| ⚠ |" not in text
    pngs = list((tmp_path / "report").glob("*.png"))
    assert len(pngs) == 1 and pngs[0].stat().st_size > 1000

    monkeypatch.setenv("TOY_SLOWDOWN", "5")                                   # planted slowdown of gconv
    p2 = _run(d, res, seed=8)
    flags = report.regressions(json.load(open(p2)), [(p1, r1)])
    assert {t.split("::")[-1] for _, t in flags} >= {"test_toy[1-gconv]", "test_toy[2-gconv]"}, flags
    # (an eager case may be flagged too when the machine is loaded: its sleeps jitter beyond their spread)
    text = report.render(str(res), str(out))
    flagged = [ln for ln in text.splitlines() if ln.startswith("- ⚠")]
    assert sum("gconv" in ln for ln in flagged) == 2 and f"{len(flags)} regression(s)" in text, text


def test_missing_baseline_is_a_clear_error(toy):
    d, res = toy
    (d / "bench_toy.py").write_text(TOY.replace('("eager",)', '("eager", "compile")'))
    r = json.load(open(_run(d, res, roofline=False, threads=1)))
    assert r["threads"] == 1 and r["device"]["torch_threads"] == 1
    with pytest.raises(runner.MissingBaselineError, match=r"baseline provider=compile .* is absent"):
        runner.analyze(r)
    with pytest.raises(runner.MissingBaselineError):
        report.render(str(res), str(d / "R.md"))
    # a baseline that fails is missing too, and the suite's failure is recorded
    planted = TOY.replace("    benchmark.group =", "    assert not (provider == 'eager' and n == 2), 'planted'\n"
                                                     "    benchmark.group =")
    assert planted != TOY
    (d / "bench_toy.py").write_text(planted)
    r = json.load(open(_run(d, res, roofline=False)))
    assert r["suites"]["toy"]["returncode"] == 1
    failed = [x for x in r["suites"]["toy"]["records"] if x.get("outcome") == "failed"]
    assert len(failed) == 1 and "planted" in failed[0]["reason"]
    with pytest.raises(runner.MissingBaselineError, match=r"provider=eager .*'n': '2'.* is failed"):
        runner.analyze(r)


def test_bad_requests(toy):
    d, res = toy
    with pytest.raises(runner.BenchError, match="unknown suite.*nope.*toy"):
        runner.run(["nope"], bench_dir=str(d), results_dir=str(res), roofline=False)
    with pytest.raises(runner.BenchError, match="mode"):
        runner.run(["toy"], mode="fast", bench_dir=str(d), results_dir=str(res), roofline=False)
    with pytest.raises(runner.BenchError, match="no results"):
        report.render(str(res / "empty"), str(d / "R.md"))


def test_summarize_and_regression_rule():
    from bench.core import summarize
    st = summarize([3.0, 1.0, 2.0, 4.0, 5.0])
    assert st["median"] == 3.0 and st["q1"] == 2.0 and st["q3"] == 4.0 and st["iqr"] == 2.0 and st["rounds"] == 5
    one = summarize([1.0])
    assert one["iqr"] == 0.0 and one["stddev"] == 0.0

    def res(med, iqr, rounds=5, date="2026-01-01", mode="quick"):
        return {"date": date, "mode": mode, "suites": {"s": {"records": [{"test": "t", "stats": {"median": med, "iqr": iqr,
                                                                                    "rounds": rounds}}]}}}
    assert not report.regressions(res(1.05, 0.1), [("p", res(1.0, 0.06))])   # within the spread
    assert ("s", "t") in report.regressions(res(1.3, 0.1), [("p", res(1.0, 0.06))])
    assert not report.regressions(res(1.08, 0.0, 1), [("p", res(1.0, 0.0, 1))])   # 10 % floor, 1 round
    assert ("s", "t") in report.regressions(res(1.2, 0.0, 1), [("p", res(1.0, 0.0, 1))])
    assert not report.regressions(res(1.3, 0.1), [("p", res(1.0, 0.06, mode="default"))])   # other sizes


def test_cuda_timer_logic_with_a_fake_device(monkeypatch):
    """bench.core.CudaBenchmark's control flow (do_bench for short calls; CUDA events for per-round setup and
    long calls; peak memory) against CPU stand-ins for torch.cuda and triton.testing — the timings
    themselves await a GPU run."""
    import time

    import torch
    import triton.testing

    from bench.core import CudaBenchmark

    class Event:
        def __init__(self, enable_timing=True):
            self.t = None

        def record(self):
            self.t = time.perf_counter()

        def elapsed_time(self, end):
            return (end.t - self.t) * 1e3

    calls = {"do_bench": 0}

    def fake_do_bench(fn, warmup=25, rep=100, return_mode="mean", **kw):
        calls["do_bench"] += 1
        assert return_mode == "all"
        out = []
        for _ in range(7):
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1e3)
        return out
    for name, val in {"synchronize": lambda: None, "reset_peak_memory_stats": lambda: None,
                      "memory_allocated": lambda: 100, "max_memory_allocated": lambda: 612, "Event": Event}.items():
        monkeypatch.setattr(torch.cuda, name, val, raising=False)
    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)

    b = CudaBenchmark(long_s=0.05)
    assert b(time.sleep, 0.001) is None
    rec = b.record()
    assert calls["do_bench"] == 1 and rec["stats"]["rounds"] == 7 and rec["peak_bytes"] == 512
    assert 0.0009 < rec["stats"]["median"] < 0.05 and "do_bench" in rec["timer"]

    seen = []
    b.pedantic(lambda x: seen.append(x), setup=lambda: ((len(seen),), {}), rounds=4, warmup_rounds=1)
    assert seen == [0, 1, 2, 3, 4, 5] and b.stats["rounds"] == 4 and calls["do_bench"] == 1   # 1st + warm-up + 4
    b.pedantic(time.sleep, args=(0.06,), rounds=2)                                           # a long call
    assert b.stats["rounds"] == 2 and b.stats["median"] >= 0.06 and calls["do_bench"] == 1
