"""gconv.jacobian tests use tiny tensors: one intra-op thread is faster for them, and on a shared
machine it avoids OpenMP barriers waiting for a descheduled second thread (≈16 ms per op)."""
import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield
