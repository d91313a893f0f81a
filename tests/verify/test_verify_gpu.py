"""GPU paths of gconv.verify (skip without CUDA; see tests/conftest.py's `gpu` marker)."""
import pytest
import torch

import gconv.verify as V
from gconv.verify import Verdict


@pytest.mark.gpu
def test_safe_exploration_on_cuda_matches_cpu(digits, small_resnet):
    cpu = V.safe_exploration(small_resnet, digits, seed=4, progress=False)
    gpu = V.safe_exploration(small_resnet, digits, seed=4, device="cuda", progress=False)
    assert cpu.verdict is gpu.verdict is Verdict.VERIFIED
    assert gpu.inputs["device"].startswith("cuda")
    assert next(small_resnet.parameters()).device.type == "cpu"          # the caller's model is not moved


@pytest.mark.gpu
def test_features_on_cuda_match_cpu(digits, small_resnet):
    a = V.extract_features(small_resnet, digits.X[:64], progress=False)
    b = V.extract_features(small_resnet, digits.X[:64], device="cuda", progress=False)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_expressivity_duplicates_on_cuda(digits, small_resnet):
    X = torch.cat([digits.X[:40], digits.X[:10]])
    assert V.expressivity(small_resnet, X, device="cuda", progress=False).verdict is Verdict.NOT_VERIFIED
