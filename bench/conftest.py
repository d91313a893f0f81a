"""bench/ runs on its own (python -m pytest bench/...): the opt-in ``large`` marker lives here too."""
import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--run-large", action="store_true", default=False,
                     help="run benchmarks marked 'large' (n ≥ 20,000; minutes to tens of minutes)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-large") or os.environ.get("GCONV_RUN_LARGE") == "1":
        return
    skip = pytest.mark.skip(reason="opt-in: large run (use --run-large or GCONV_RUN_LARGE=1)")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)
