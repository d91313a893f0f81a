import pytest
import torch

import gconv.data as D
import gconv.models as M


@pytest.fixture(scope="module")
def digits():
    return D.load("builtin:digits28", n=150, seed=0)


@pytest.fixture(scope="module")
def small_resnet():
    return M.resnet18(1, 10, width=8, seed=1)
