import json

import pytest
import torch
from torch import nn

import gconv.data as D
import gconv.models as M
import gconv.verify as V
from gconv.linalg import MemoryBudgetError, RankCertificate
from gconv.verify import Verdict, VerificationReport, extract_features


def _reports():
    torch.manual_seed(0)
    Z = torch.randn(25, 6, dtype=torch.float64)
    X = torch.randn(6, 2, dtype=torch.float64)
    Y = torch.randn(6, 1, dtype=torch.float64)
    mlp = M.MLP(2, [8], 1, seed=0).double()
    return [V.safe_exploration(Z, progress=False, spectrum=True),
            V.expressivity(Z, width=4, progress=False),
            V.gram_positive_definite(Z.T.contiguous(), progress=False, spectrum=True),
            V.alignment(mlp, (X, Y), "squared", progress=False),
            V.gradient_basis_gap(mlp, (X, Y), "squared", progress=False),
            V.ntk_rank_preserved(mlp, X, mlp, progress=False)]


@pytest.fixture(scope="module")
def reports():
    return _reports()


def test_every_report_round_trips_through_strict_json(reports, tmp_path):
    for rep in reports:
        s = rep.to_json()
        json.loads(s, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
        back = VerificationReport.from_json(s)
        assert back.to_dict() == rep.to_dict()
        assert back.verdict is rep.verdict and isinstance(back.verdict, Verdict)
        for key in ("condition", "paper", "equation", "inputs", "certificate", "timings", "environment"):
            assert getattr(back, key)
        assert "n" in back.inputs and "total" in back.timings and "torch" in back.environment
        if back.certificate_type == "RankCertificate":
            assert isinstance(back.certificate_object(), RankCertificate)
        out = V.plot_report(back, tmp_path / f"{rep.condition}.png")
        assert (tmp_path / f"{rep.condition}.png").stat().st_size > 1000, out
    assert {r.condition for r in reports} == {"safe_exploration", "expressivity", "gram_positive_definite",
                                              "alignment", "gradient_basis_gap", "ntk_rank_preserved"}


def test_report_api_contract(reports):
    rep = reports[0]
    with pytest.raises(TypeError, match="three outcomes"):
        bool(rep)
    assert Verdict.VERIFIED.exit_code == 0 and Verdict.NOT_VERIFIED.exit_code == 1 == Verdict.INCONCLUSIVE.exit_code
    d = rep.to_dict()
    with pytest.raises(ValueError, match="unknown fields"):
        VerificationReport.from_dict(dict(d, extra=1))
    with pytest.raises(ValueError, match="missing fields"):
        VerificationReport.from_dict({k: v for k, v in d.items() if k != "verdict"})
    with pytest.raises(ValueError):
        VerificationReport.from_dict(dict(d, verdict="MAYBE"))
    s = rep.summary()
    assert "VERIFIED" in s and "margin" in s and "time:" in s
    assert reports[1].verdict is Verdict.NOT_VERIFIED          # width 4 + 1 < n = 25


def test_inf_survives_the_round_trip(reports):
    rep = VerificationReport.from_dict(reports[0].to_dict())
    rep.details["bounds"]["x"] = float("inf")
    rep.margin = float("inf")
    back = VerificationReport.from_json(rep.to_json())
    assert back.margin == float("inf") and back.details["bounds"]["x"] == float("inf")


# ---------------------------------------------------------------------------------- features
def test_hook_features_equal_model_features_in_batches(digits, small_resnet):
    small_resnet.eval()
    ref = small_resnet.features(digits.X[:37]).detach().double()
    for bs in (1, 10, 64):
        f = extract_features(small_resnet, digits.X[:37], batch_size=bs, progress=False)
        assert f.dtype == torch.float64 and f.shape == ref.shape
        torch.testing.assert_close(f, ref, rtol=1e-5, atol=1e-6)
    X_nc = digits.X[:37].transpose(2, 3).contiguous().transpose(2, 3)     # same values, non-contiguous
    assert not X_nc.is_contiguous()
    torch.testing.assert_close(extract_features(small_resnet, X_nc, progress=False), ref, rtol=1e-5, atol=1e-6)


def test_eval_mode_default_restored_and_train_mode_option(digits):
    net = M.resnet18(1, 10, width=8, seed=0)
    net.train()
    timings = {}
    a = extract_features(net, digits.X[:32], progress=False, timings=timings)
    assert net.training and timings["features"] > 0
    before = {k: v.clone() for k, v in net.state_dict().items()}
    b = extract_features(net, digits.X[:32], train=True, batch_size=32, progress=False)
    assert net.training
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)      # running statistics untouched
    assert not torch.allclose(a, b)                 # BatchNorm batch statistics vs running statistics
    net.eval()
    c = extract_features(net, digits.X[:32], progress=False)
    assert not net.training
    torch.testing.assert_close(a, c)


def test_layers_after_the_feature_layer_are_not_run():
    class Boom(nn.Module):
        def forward(self, x):
            raise AssertionError("the head must not run")
    net = nn.Sequential()
    net.add_module("body", nn.Linear(3, 5))
    net.add_module("head", Boom())
    f = extract_features(net, torch.randn(9, 3), layer="body", progress=False)
    assert f.shape == (9, 5)


def test_datasets_budgets_and_errors():
    ds = torch.utils.data.TensorDataset(torch.randn(11, 4), torch.arange(11))
    mlp = M.MLP(4, [6], 2, seed=0)
    f = extract_features(mlp, ds, batch_size=4, progress=False)
    torch.testing.assert_close(f, mlp.features(ds.tensors[0]).detach().double())
    with pytest.raises(MemoryBudgetError, match="memory budget"):
        extract_features(mlp, torch.randn(1000, 4), memory_budget=1000, progress=False)
    with pytest.raises(ValueError, match="not a module"):
        extract_features(mlp, ds, layer="fc9", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(mlp, ds, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        extract_features(mlp, torch.full((3, 4), float("nan")), progress=False)
    frozen = M.MLP(4, [6], 2, seed=0).requires_grad_(False)       # frozen parameters work the same
    torch.testing.assert_close(extract_features(frozen, ds, progress=False), f)
