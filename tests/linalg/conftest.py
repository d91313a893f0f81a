"""Fixtures for gconv.linalg tests; realistic inputs come from :mod:`gconv.linalg.testing`."""
import numpy as np
import pytest

from gconv.linalg.testing import (SmallSoftplusNet, digit_features, digit_images, expressivity_factors,  # noqa: F401
                                  safe_exploration_factors)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
