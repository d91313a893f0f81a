import numpy as np
import pytest
import torch

import gconv.data as D
import gconv.models as M
import gconv.verify as V
from gconv.verify import Verdict


def test_p3l_embedding_gram_is_certified_positive_definite():
    d = D.load("builtin:gaussian_regression", n=20, seed=0)
    model = M.P3L(20, 50, seed=0)
    rep = V.gram_positive_definite(model, d, progress=False, spectrum=True)
    assert rep.verdict is Verdict.VERIFIED
    assert rep.inputs["D"] == 50 and rep.inputs["matrix_shape"] == [20, 50]
    G = model.gram(d.X.double()).numpy()                    # float64 reference, seed 004's G
    lam = np.linalg.eigvalsh(G)[0]
    assert 0 < rep.margin <= lam
    assert rep.details["lambda_min_G_estimate"] == pytest.approx(lam, rel=1e-6)
    assert rep.details["bounds"]["lambda_max_G_upper"] >= np.linalg.eigvalsh(G)[-1]


def test_fewer_features_than_samples_do_not_verify():
    d = D.load("builtin:gaussian_regression", n=20, seed=0)
    rep = V.gram_positive_definite(M.P3L(20, 10, D=12, seed=0), d, progress=False)
    assert rep.verdict is Verdict.NOT_VERIFIED and rep.margin is None


def test_duplicated_inputs_and_given_phi():
    torch.manual_seed(0)
    Phi = torch.randn(15, 40, dtype=torch.float64)
    assert V.gram_positive_definite(Phi, progress=False).verdict is Verdict.VERIFIED
    Phi[7] = Phi[3]
    rep = V.gram_positive_definite(Phi, progress=False)
    assert rep.verdict is Verdict.NOT_VERIFIED


def test_any_embedding_module():
    emb = torch.nn.Sequential(torch.nn.Linear(4, 30), torch.nn.Tanh())
    rep = V.gram_positive_definite(emb, torch.randn(10, 4), progress=False)
    assert rep.verdict is Verdict.VERIFIED and rep.inputs["feature_shape"] == [10, 30]
    with pytest.raises(TypeError, match="nn.Module"):
        V.gram_positive_definite(lambda x: x, torch.randn(3, 2), progress=False)
