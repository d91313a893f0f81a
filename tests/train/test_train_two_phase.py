"""TwoPhase (seed 003, Algorithm 1): perturbation of all but the last layer, the two second-phase
modes, rank checks and violation reporting, checkpoints, bad configurations."""
import functools
import warnings

import pytest
import torch
from torch import nn

import gconv.models as M
from gconv.train import RankViolation, TwoPhase, dense_jacobian, dense_ntk_rank, ntk_rank

CE = nn.CrossEntropyLoss()


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _closure(w, X, Y):
    def closure():
        w.optimizer.zero_grad()
        loss = CE(w.model(X), Y)
        loss.backward()
        return loss
    return closure


def _mlp(seed=0):
    return M.MLP(2, [8, 8], 2, seed=seed)


def test_perturbation_hits_all_but_the_last_layer_with_delta0(moons, sgd):
    X, Y = moons.tensors()
    w = TwoPhase(_mlp(), sgd, tau=2, delta0=1e-2, seed=5, rank_check=False)
    w.step(_closure(w, X, Y))
    w.optimizer.zero_grad()
    CE(w.model(X), Y).backward()
    w.optimizer.step()
    before = _params(w.model)
    assert w.on_step_end() and w.phase == "phase2"
    g = torch.Generator().manual_seed(5)
    for name, p in w.model.named_parameters():
        if name.startswith("head."):
            assert torch.equal(p.detach(), before[name]), "the last layer is not perturbed"
            continue
        delta = torch.randn(p.shape, generator=g, dtype=torch.float64)
        assert torch.equal(p.detach(), before[name] + (1e-2 * delta).float()), name
    assert w.perturbation["d"] == sum(before[n].numel() for n in before if not n.startswith("head."))
    with pytest.raises(RuntimeError, match="exactly once"):
        w.switch()


def test_sigma_per_layer_override(moons, sgd):
    w = TwoPhase(_mlp(), sgd, tau=1, delta0=1e-3, sigma={"trunk.fc1": 0.5}, rank_check=False)
    before = _params(w.model)
    w.fit(moons, CE, steps=1, show_progress=False)
    assert w.perturbation["sigma"]["trunk.fc1.weight"] == 0.5 and w.perturbation["sigma"]["trunk.fc2.bias"] == 1e-3
    moved = (w.model.trunk.fc1.weight - before["trunk.fc1.weight"]).abs().max()
    assert float(moved) > 0.05
    with pytest.raises(ValueError, match="sigma key 'nope' matches no trainable parameter"):
        TwoPhase(_mlp(), sgd, tau=1, sigma={"nope": 0.1}, rank_check=False)


@pytest.mark.parametrize("mode", ["last_layer", "lazy"])
def test_second_phase_modes(moons, sgd, mode):
    X, Y = moons.tensors()
    w = TwoPhase(_mlp(), sgd, tau=2, mode=mode, rank_check=False)
    for _ in range(2):
        w.step(_closure(w, X, Y))
    p0 = _params(w.model)
    for _ in range(3):
        w.step(_closure(w, X, Y))
    p1 = _params(w.model)
    for name in p0:
        changed = not torch.equal(p0[name], p1[name])
        assert changed == (mode == "lazy" or name.startswith("head.")), name
    trainable = [n for n, p in w.model.named_parameters() if p.requires_grad]
    assert trainable == (["head.weight", "head.bias"] if mode == "last_layer" else list(p0))


def test_rank_checks_record_history_without_violation(moons, sgd):
    data = moons.head(8)
    w = TwoPhase(_mlp(), sgd, tau=3, total_steps=9, data=data, rank_check=dense_ntk_rank, check_every=2)
    w.fit(moons, CE, show_progress=False)
    ref = w.reference_rank
    assert [h["step"] for h in w.rank_history] == [3, 5, 7, 9]
    assert w.rank_history[0]["reference"] and not w.violations
    # K = J Jᵀ over all parameters: 8 samples × 2 outputs, full rank for this generic net
    assert ref == 16


def test_violation_is_reported_with_the_real_dense_check(moons, sgd):
    """Kill the hidden layer between checks: rank K drops and the check reports it."""
    X, Y = moons.tensors()
    data = moons.head(8)
    w = TwoPhase(_mlp(), sgd, tau=2, mode="lazy", data=data, rank_check=dense_ntk_rank, check_every=1)
    for _ in range(3):
        w.step(_closure(w, X, Y))
    assert w.reference_rank == 16 and not w.violations
    with torch.no_grad():
        w.model.trunk.fc1.weight.zero_()
        w.model.trunk.fc1.bias.fill_(-1.0)    # softplus_100(−1) ≈ 0: the first layer is dead
    with pytest.warns(RuntimeWarning, match=r"rank K\(w\^4\) = \d+ < rank K\(w\^τ\) = 16"):
        w.step(_closure(w, X, Y))
    v = w.violations[0]
    assert v["step"] == 4 and v["rank"] < 16 and v["reference_rank"] == 16 and v["action"] == "reported"
    assert w.rank_history[-1]["violation"]


class _ScriptedRank:
    """A rank check that returns planted values (for the raise / revert mechanics)."""

    def __init__(self, values):
        self.values, self.calls = list(values), []

    def __call__(self, model, data, params):
        self.calls.append(list(params))
        return self.values.pop(0)


def test_on_violation_raise_and_revert(moons, sgd):
    X, Y = moons.tensors()
    chk = _ScriptedRank([10, 10, 9])
    w = TwoPhase(_mlp(), sgd, tau=1, data=moons, rank_check=chk, check_every=1, on_violation="raise")
    w.step(_closure(w, X, Y))
    w.step(_closure(w, X, Y))
    with pytest.raises(RankViolation, match="rank K"):
        w.step(_closure(w, X, Y))
    assert w.violations[0]["rank"] == 9
    assert chk.calls[0] == [n for n, _ in w.model.named_parameters()]     # K over all of w, frozen included

    chk = _ScriptedRank([10, 10, 9, 10])
    w = TwoPhase(_mlp(), sgd, tau=1, mode="lazy", data=moons, rank_check=chk, check_every=1, on_violation="revert")
    w.step(_closure(w, X, Y))
    w.step(_closure(w, X, Y))
    good = _params(w.model)
    lr0 = w.optimizer.param_groups[0]["lr"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w.step(_closure(w, X, Y))          # violation: back to the last checked state, lr halved
    for name, p in w.model.named_parameters():
        assert torch.equal(p.detach(), good[name])
    assert w.optimizer.param_groups[0]["lr"] == lr0 / 2 and "halved" in w.violations[0]["action"]
    w.step(_closure(w, X, Y))
    assert len(w.violations) == 1


def test_checkpoint_round_trip_across_the_switch(moons, sgd, tmp_path):
    data = moons.head(6)

    def make():
        return TwoPhase(_mlp(3), sgd, tau=3, total_steps=8, data=data, rank_check=dense_ntk_rank, check_every=2,
                        seed=2)
    ref = make()
    ref.fit(moons, CE, batch_size=10, show_progress=False)
    a = make()
    a.fit(moons, CE, steps=5, batch_size=10, show_progress=False)
    a.save(tmp_path / "tp.pt")
    b = make()
    b.load(tmp_path / "tp.pt")
    assert b.phase == "phase2" and b.reference_rank == a.reference_rank and b.rank_history == a.rank_history
    b.fit(moons, CE, batch_size=10, show_progress=False)
    for name, p in ref.model.named_parameters():
        assert torch.equal(p, dict(b.model.named_parameters())[name])
    assert b.rank_history == ref.rank_history


def test_dense_jacobian_matches_per_sample_autograd():
    m = M.MLP(3, [5], 2, zeta=4.0, seed=0).double()
    X = torch.randn(4, 3, dtype=torch.float64)
    J = dense_jacobian(m, X)
    rows = []
    for i in range(4):
        for j in range(2):
            g = torch.autograd.grad(m(X[i:i + 1])[0, j], list(m.parameters()))
            rows.append(torch.cat([t.reshape(-1) for t in g]))
    torch.testing.assert_close(J, torch.stack(rows), rtol=1e-10, atol=1e-12)
    lin = nn.Linear(3, 1, bias=False)
    Xr = torch.randn(7, 3)
    assert dense_ntk_rank(lin, Xr) == 3            # K = X Xᵀ has rank d = 3 < n = 7
    assert dense_ntk_rank(lin, Xr[:2]) == 2


def test_default_rank_check_uses_gconv_jacobian_and_linalg(moons):
    m = _mlp()
    data = moons.head(8)
    assert ntk_rank(m, data, [n for n, _ in m.named_parameters()]) == dense_ntk_rank(m, data) == 16
    w = TwoPhase(_mlp(), functools.partial(torch.optim.SGD, lr=0.05), tau=2, total_steps=6, data=data,
                 check_every=2)                          # the default rank check
    w.fit(moons, CE, show_progress=False)
    assert w.reference_rank == 16 and [h["rank"] for h in w.rank_history] == [16, 16, 16] and not w.violations


@pytest.mark.parametrize("kw, err, msg", [
    (dict(tau=2, delta0=0.0), ValueError, r"delta0 \(δ₀\) must be a positive"),
    (dict(tau=2, delta0=-1.0), ValueError, r"delta0 \(δ₀\) must be a positive"),
    (dict(tau=2, mode="all"), ValueError, "mode must be 'last_layer' or 'lazy'"),
    (dict(tau=2, on_violation="ignore"), ValueError, "on_violation"),
    (dict(tau=2), ValueError, "rank checks need data="),
    (dict(tau=5, total_steps=4, rank_check=False), ValueError, "beyond the run"),
    (dict(tau=2, rank_check=False, last_layer="nope"), ValueError, "last_layer 'nope' is not a module"),
    (dict(tau=2, rank_check=False, check_every=-1), ValueError, "check_every"),
])
def test_bad_configuration(sgd, kw, err, msg):
    with pytest.raises(err, match=msg):
        TwoPhase(_mlp(), sgd, **kw)


def test_models_without_a_usable_last_layer(sgd):
    with pytest.raises(ValueError, match="no trainable parameter: not a usable last layer"):
        TwoPhase(M.P3L(3, 4), sgd, tau=2, rank_check=False)
    with pytest.raises(ValueError, match="no usable last layer"):
        TwoPhase(nn.Sequential(nn.Conv2d(1, 1, 1)), sgd, tau=2, rank_check=False)
    only_last = nn.Linear(3, 2)
    w = TwoPhase(only_last, sgd, tau=1, rank_check=False)
    with pytest.raises(ValueError, match="nothing to perturb"):
        w.switch()
