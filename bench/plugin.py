"""pytest plugin for every suite in bench/ (``python -m bench run`` drives it; plain pytest works too).

GCONV_BENCH_THREADS sets torch's intra-op threads.
Options: ``--bench-device cpu|cuda`` (env GCONV_BENCH_DEVICE), ``--bench-mode quick|default|full``
(env GCONV_BENCH_MODE; ``full`` also runs the ``large`` cases), ``--run-large``.  Suites read the two
settings at import through :func:`bench.core.setting`, so parametrisations can depend on them.

Fixtures: ``benchmark`` (pytest-benchmark's on CPU with peak-RSS sampling, triton do_bench on CUDA;
see :mod:`bench.core`), ``device``, ``bench_mode``, ``bench_seed`` (fresh per run; recorded).
When GCONV_BENCH_RECORD names a file, each test's outcome, skip reason, parameters, statistics and
extra_info, plus the suites' ``BENCH_BASELINES`` / ``BENCH_PLOTS`` declarations, are written there.
"""
import json
import os

import pytest

from bench import core

_RECORDS: dict = {}
_MODULES: dict = {}


def pytest_addoption(parser):
    parser.addoption("--run-large", action="store_true", default=False,
                     help="run benchmarks marked 'large' (n ≥ 20,000; minutes to tens of minutes)")
    parser.addoption("--bench-device", default=None, choices=("cpu", "cuda"),
                     help="device the suites measure (default: $GCONV_BENCH_DEVICE or cpu)")
    parser.addoption("--bench-mode", default=None, choices=("quick", "default", "full"),
                     help="size set (default: $GCONV_BENCH_MODE or default)")


def pytest_configure(config):
    if config.getoption("--bench-device"):
        os.environ["GCONV_BENCH_DEVICE"] = config.getoption("--bench-device")
    if config.getoption("--bench-mode"):
        os.environ["GCONV_BENCH_MODE"] = config.getoption("--bench-mode")
    if os.environ.get("GCONV_BENCH_THREADS"):
        import torch
        torch.set_num_threads(int(os.environ["GCONV_BENCH_THREADS"]))
    if not config.pluginmanager.has_plugin("gconv-bench-fixtures"):
        if core.setting("device") == "cuda":
            if config.pluginmanager.has_plugin("benchmark"):
                raise pytest.UsageError("--bench-device cuda times with triton.testing.do_bench: run pytest with "
                                        "-p no:benchmark (python -m bench run --device cuda does)")
            config.pluginmanager.register(_CudaFixtures(), "gconv-bench-fixtures")
        else:
            config.pluginmanager.register(_CpuFixtures(), "gconv-bench-fixtures")
    config.addinivalue_line("markers", "large: opt-in long benchmark (--run-large, GCONV_RUN_LARGE=1 or full mode)")


def pytest_collection_modifyitems(config, items):
    if (config.getoption("--run-large") or os.environ.get("GCONV_RUN_LARGE") == "1"
            or core.setting("mode") == "full"):
        return
    skip = pytest.mark.skip(reason="opt-in: large run (use --run-large, GCONV_RUN_LARGE=1 or --full)")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device():
    return core.setting("device")


@pytest.fixture
def bench_mode():
    return core.setting("mode")


@pytest.fixture
def bench_seed():
    return core.setting("seed")


class _CpuFixtures:
    """Registered in pytest_configure, after pytest-benchmark, so that this ``benchmark`` overrides its
    fixture (and instruments it) whether the plugin comes from bench/conftest.py or ``-p bench.plugin``."""

    @pytest.fixture(name="benchmark")
    def benchmark(self, request, benchmark):
        b = core.instrument(benchmark)
        yield b
        _entry(request.node).update(core.cpu_record(b))


class _CudaFixtures:
    """``benchmark`` timed by triton.testing.do_bench (pytest-benchmark must be off: -p no:benchmark)."""

    @pytest.fixture(name="benchmark")
    def benchmark(self, request):
        b = core.CudaBenchmark()
        yield b
        _entry(request.node).update(b.record())


def _entry(item):
    mod = item.module
    name = mod.__name__.rsplit(".", 1)[-1]
    if name not in _MODULES:
        _MODULES[name] = {"baselines": getattr(mod, "BENCH_BASELINES", None), "plots": getattr(mod, "BENCH_PLOTS", []),
                          "doc": (mod.__doc__ or "").strip().split("\n")[0]}
    cs = getattr(item, "callspec", None)
    params = {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
              for k, v in (cs.params.items() if cs else ())}
    return _RECORDS.setdefault(item.nodeid, {"test": item.nodeid, "function": item.originalname,
                                             "module": name, "params": params})


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and not report.passed):
        item_rec = _RECORDS.get(report.nodeid)
        if item_rec is None:
            return
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            item_rec.update(outcome="skipped", reason=reason.removeprefix("Skipped: "))
        elif report.failed:
            item_rec.update(outcome="failed", reason=str(report.longrepr)[-2000:])
        else:
            item_rec.setdefault("outcome", "passed")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _entry(item)


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("GCONV_BENCH_RECORD")
    if not path:
        return
    from gconv._utils import to_jsonable
    with open(path, "w") as fh:
        json.dump(to_jsonable({"modules": _MODULES, "records": list(_RECORDS.values())}), fh, indent=1)
