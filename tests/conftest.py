import os

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--run-large", action="store_true", default=False,
                     help="run tests marked 'large' (n = 60,000 and similar; tens of minutes)")


def pytest_collection_modifyitems(config, items):
    run_large = config.getoption("--run-large") or os.environ.get("GCONV_RUN_LARGE") == "1"
    skip_large = pytest.mark.skip(reason="opt-in: large run (use --run-large or GCONV_RUN_LARGE=1)")
    if torch.cuda.is_available():
        skip_gpu = None
    else:
        why = "torch is a CPU build" if torch.version.cuda is None else "no CUDA device is visible"
        skip_gpu = pytest.mark.skip(reason=f"needs a CUDA GPU: {why} (torch {torch.__version__})")
    for item in items:
        if "large" in item.keywords and not run_large:
            item.add_marker(skip_large)
        if "gpu" in item.keywords and skip_gpu is not None:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread avoids synchronisation overhead (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
