import math

import numpy as np
import pytest
import torch

import gconv.models as M
import gconv.verify as V
from gconv.models.mlp import MLP
from gconv.verify import Verdict
from gconv.verify.features import he_normal


def _softplus100(x):
    return torch.nn.functional.softplus(x, beta=100.0)


def test_default_width_is_1p1_n_and_verifies(digits, small_resnet):
    rep = V.expressivity(small_resnet, digits, seed=2, progress=False)
    n = digits.n
    assert rep.inputs["width"] == math.ceil(1.1 * n)
    assert rep.inputs["matrix_shape"] == [n, math.ceil(1.1 * n) + 1]
    assert rep.verdict is Verdict.VERIFIED and rep.margin > 0
    # float64 reference: the explicit [softplus(Z̄W), 1] with the same seeded W
    Zbar = small_resnet.eval().features(digits.X).detach().double()
    W = he_normal(Zbar.shape[1], math.ceil(1.1 * n), 2)
    H = torch.cat([_softplus100(Zbar @ W), torch.ones(n, 1, dtype=torch.float64)], 1).numpy()
    assert np.linalg.matrix_rank(H) == n
    assert np.linalg.svd(H, compute_uv=False)[-1] >= rep.margin * (1 - 1e-6)


def test_width_below_n_does_not_verify(digits, small_resnet):
    rep = V.expressivity(small_resnet, digits, width=digits.n - 2, progress=False)
    assert rep.verdict is Verdict.NOT_VERIFIED and rep.certificate["status"] == "CERTIFIED_RANK_DEFICIENT"


def test_duplicated_inputs_do_not_verify(digits, small_resnet):
    X = torch.cat([digits.X[:50], digits.X[10:20]])
    rep = V.expressivity(small_resnet, X, progress=False)
    assert rep.verdict is Verdict.NOT_VERIFIED


def test_width_model_uses_the_models_own_hidden_layer():
    torch.manual_seed(0)
    X = torch.randn(40, 5)
    wide = MLP(5, [60], 1, seed=0)
    rep = V.expressivity(wide, X, width="model", progress=False, spectrum=True)
    assert rep.verdict is Verdict.VERIFIED and rep.inputs["width"] == 60
    assert len(rep.details["spectrum"]["values"]) == 40
    narrow = MLP(5, [30], 1, seed=0)
    assert V.expressivity(narrow, X, width="model", progress=False).verdict is Verdict.NOT_VERIFIED


def test_named_layer_of_any_module():
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    X = torch.randn(12, 3)
    rep = V.expressivity(net, X, layer="1", progress=False)
    assert rep.inputs["feature_shape"] == [12, 16] and rep.verdict is Verdict.VERIFIED
    with pytest.raises(ValueError, match="names no feature layer"):
        V.expressivity(net, X, progress=False)
    with pytest.raises(ValueError, match="not a module"):
        V.expressivity(net, X, layer="nope", progress=False)
    with pytest.raises(ValueError, match="width must be"):
        V.expressivity(net, X, layer="1", width=0, progress=False)
