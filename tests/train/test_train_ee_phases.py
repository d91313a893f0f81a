"""EE wrapper (seed 000, Algorithm 1): phases, the one perturbation, the frozen gate, exploitation
of θ_(H−1) only, optimizers, checkpoints across the switch, bad configurations."""
import functools
import math

import pytest
import torch
from torch import nn

import gconv.models as M
from gconv.train import EEWrapper

CE = nn.CrossEntropyLoss()


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _buffers(model):
    return {n: b.detach().clone() for n, b in model.named_buffers() if b is not None}


def _loss_closure(w, X, Y):
    def closure():
        w.optimizer.zero_grad()
        loss = CE(w.model(X), Y)
        loss.backward()
        return loss
    return closure


def test_phases_switch_once_at_tau_with_the_seeded_perturbation(moons, sgd):
    X, Y = moons.tensors()
    w = EEWrapper(M.MLP(2, [10, 10], 2, seed=0), sgd, tau=3, epsilon=0.05, seed=7)
    assert w.phase == "exploration" and not w.head.gate_frozen
    for _ in range(2):
        w.step(CE(w.model(X), Y))
    assert w.phase == "exploration"
    # the third step: the optimizer steps, then the switch perturbs θ once, from generator(seed)
    w.optimizer.zero_grad()
    CE(w.model(X), Y).backward()
    w.optimizer.step()
    before = _params(w.model)
    assert w.on_step_end() is True
    assert w.phase == "exploitation" and w.t == 3 and w.switch_info["step"] == 3
    g = torch.Generator().manual_seed(7)
    for name, p in w.model.named_parameters():
        delta = torch.randn(p.shape, generator=g, dtype=torch.float64)
        assert torch.equal(p.detach(), before[name] + (0.05 * delta).float()), name
    d = sum(p.numel() for p in before.values())
    assert w.perturbation["d"] == d and w.perturbation["epsilon"] == 0.05
    assert w.perturbation["norm"] == pytest.approx(0.05 * math.sqrt(d), rel=0.1)
    # line 10: the gate is R = θ^τ_(H−1) (after the perturbation), frozen
    assert w.head.gate_frozen and torch.equal(w.head.gate_weight, w.head.weight.detach())
    with pytest.raises(RuntimeError, match="exactly once"):
        w.switch()
    for _ in range(3):
        w.step(_loss_closure(w, X, Y))
    assert w.perturbation["step"] == 3 and w.t == 6


@pytest.mark.parametrize("opt2", ["sgd", "adam", "lbfgs"])
def test_exploitation_changes_only_theta_H_minus_1(small_cnn, images, sgd, opt2):
    """All other parameters and the BatchNorm statistics stay bit-identical; the gate stays frozen."""
    factories = {"sgd": sgd, "adam": functools.partial(torch.optim.Adam, lr=1e-2, weight_decay=1e-4),
                 "lbfgs": functools.partial(torch.optim.LBFGS, lr=0.5, max_iter=5, line_search_fn="strong_wolfe")}
    X, Y = images.tensors()
    w = EEWrapper(small_cnn, sgd, factories[opt2], tau=2, epsilon=1e-3, n=images.n, seed=0)
    w.model.train()
    w.step(_loss_closure(w, X, Y))
    stats_before = _buffers(w.model)
    w.step(_loss_closure(w, X, Y))
    assert w.phase == "exploitation"
    assert not torch.equal(_buffers(w.model)["bn.running_mean"], stats_before["bn.running_mean"])
    p0, b0, gate0 = _params(w.model), _buffers(w.model), w.head.gate_weight.clone()
    assert [id(p) for g in w.optimizer.param_groups for p in g["params"]] == [id(w.head.weight)]
    assert type(w.optimizer).__name__ == {"sgd": "SGD", "adam": "Adam", "lbfgs": "LBFGS"}[opt2]
    for _ in range(3):
        w.step(_loss_closure(w, X, Y))
    p1, b1 = _params(w.model), _buffers(w.model)
    for name in p0:
        if name == "fc.weight":
            assert not torch.equal(p0[name], p1[name]), "θ_(H−1) must move"
        else:
            assert torch.equal(p0[name], p1[name]), f"{name} changed during exploitation"
    for name in b0:
        assert torch.equal(b0[name], b1[name]), f"buffer {name} changed during exploitation"
    assert torch.equal(w.head.gate_weight, gate0)
    assert [n for n, p in w.model.named_parameters() if p.requires_grad] == ["fc.weight"]


def test_freeze_norm_false_keeps_batchnorm_in_train_mode(small_cnn, images, sgd):
    X, Y = images.tensors()
    w = EEWrapper(small_cnn, sgd, tau=1, n=images.n, freeze_norm=False)
    w.step(_loss_closure(w, X, Y))
    rm = w.model.bn.running_mean.clone()
    w.step(_loss_closure(w, X, Y))
    assert not torch.equal(rm, w.model.bn.running_mean)


def test_deterministic_under_seed_and_independent_of_global_rng(moons, sgd):
    def run(global_seed):
        torch.manual_seed(global_seed)
        m = M.MLP(2, [10, 10], 2, seed=1)
        w = EEWrapper(m, sgd, tau=4, epsilon=0.01, seed=3)
        res = w.fit(moons, CE, steps=8, batch_size=10, show_progress=False)
        return _params(w.model), res
    a, ra = run(0)
    b, rb = run(123)
    for name in a:
        assert torch.equal(a[name], b[name])
    assert [h.get("loss") for h in ra.history] == [h.get("loss") for h in rb.history]
    m = M.MLP(2, [10, 10], 2, seed=1)
    w = EEWrapper(m, sgd, tau=4, epsilon=0.01, seed=4)
    w.fit(moons, CE, steps=8, batch_size=10, show_progress=False)
    assert not torch.equal(_params(w.model)["head.weight"], a["head.weight"])


def test_tau0_fraction_and_epoch_unit(moons, sgd):
    w = EEWrapper(M.MLP(2, [6, 6], 2), sgd, tau0=0.6, total_steps=10)
    assert w.tau == 6
    e = EEWrapper(M.MLP(2, [6, 6], 2), sgd, tau=2, unit="epoch")
    res = e.fit(moons, CE, epochs=3, batch_size=8, show_progress=False)   # 3 batches per epoch
    assert e.switch_info["epoch"] == 2 and e.switch_info["step"] == 6 and res.switched_at == 6
    assert e.t == 9 and e.phase == "exploitation"
    assert {h["phase"] for h in res.history if h["step"] <= 6 and "loss" in h} == {"exploration"}
    with pytest.raises(ValueError, match="epochs=, not steps="):
        e.fit(moons, CE, steps=3, show_progress=False)


def _fresh(sgd, opt2=None, **kw):
    return EEWrapper(M.MLP(2, [10, 10], 2, seed=2), sgd, opt2, tau=5, total_steps=10, epsilon=0.02, seed=9, **kw)


@pytest.mark.parametrize("stop", [3, 5, 7])
def test_checkpoint_round_trip_on_both_sides_of_the_switch(moons, sgd, tmp_path, stop):
    adam = functools.partial(torch.optim.Adam, lr=1e-2)
    ref = _fresh(sgd, adam)
    ref.fit(moons, CE, steps=10, batch_size=8, show_progress=False)

    a = _fresh(sgd, adam)
    a.fit(moons, CE, steps=stop, batch_size=8, show_progress=False)
    path = tmp_path / "ckpt.pt"
    a.save(path)
    b = _fresh(sgd, adam)
    b.load(path)
    assert b.phase == a.phase and b.t == stop and b.perturbation == a.perturbation
    if stop >= 5:
        assert b.head.gate_frozen and torch.equal(b.head.gate_weight, a.head.gate_weight)
        assert type(b.optimizer).__name__ == "Adam"
        assert bool(b.optimizer.state_dict()["state"]) == (stop > 5)    # Adam's moments travel too
        assert [n for n, p in b.model.named_parameters() if p.requires_grad] == ["head.weight"]
    for name, p in a.model.named_parameters():
        assert torch.equal(p, dict(b.model.named_parameters())[name])   # no second perturbation on load
    b.fit(moons, CE, steps=10, batch_size=8, show_progress=False)
    for name, p in ref.model.named_parameters():
        assert torch.equal(p, dict(b.model.named_parameters())[name]), name


def test_fit_resumes_from_its_checkpoint_file(moons, sgd, tmp_path):
    ref = _fresh(sgd)
    ref.fit(moons, CE, steps=9, batch_size=10, show_progress=False)
    path = tmp_path / "run.pt"
    a = _fresh(sgd)
    a.fit(moons, CE, steps=6, batch_size=10, checkpoint=str(path), checkpoint_every=2, show_progress=False)
    b = _fresh(sgd)
    res = b.fit(moons, CE, steps=9, batch_size=10, checkpoint=str(path), resume=True, show_progress=False)
    assert res.history[0]["step"] == 6 and b.t == 9
    assert torch.equal(b.head.weight, ref.head.weight)


def test_wrong_checkpoints_are_refused(moons, sgd):
    a = _fresh(sgd)
    a.fit(moons, CE, steps=6, show_progress=False)
    with pytest.raises(ValueError, match="tau"):
        EEWrapper(M.MLP(2, [10, 10], 2), sgd, tau=4).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="not a EEWrapper checkpoint"):
        _fresh(sgd).load_state_dict({"kind": "TwoPhase"})
    early = _fresh(sgd)
    early.fit(moons, CE, steps=2, show_progress=False)
    with pytest.raises(ValueError, match="already switched"):
        a.load_state_dict(early.state_dict())


def test_hand_written_loop_with_lbfgs_after_the_switch(moons, sgd):
    X, Y = moons.tensors()
    lbfgs = functools.partial(torch.optim.LBFGS, lr=1, max_iter=10, line_search_fn="strong_wolfe")
    w = EEWrapper(M.MLP(2, [10, 10], 2, seed=0), sgd, lbfgs, tau=3, epsilon=0.01)
    phases, switched = [], []
    w2 = EEWrapper(M.MLP(2, [10, 10], 2, seed=0), sgd, lbfgs, tau=3, epsilon=0.01,
                   on_switch=lambda wr: switched.append(wr.t))
    for _ in range(6):
        phases.append(w.phase)
        if w.phase == "exploration":
            w.step(CE(w.model(X), Y))
        else:
            with pytest.raises(ValueError, match="pass a closure"):
                w.step(CE(w.model(X), Y))
            w.step(_loss_closure(w, X, Y))
        w2.step(_loss_closure(w2, X, Y))
    assert phases == ["exploration"] * 3 + ["exploitation"] * 3 and switched == [3]


def test_feature_cache_gives_the_same_training(moons, sgd):
    runs = []
    for cache in (True, False):
        w = _fresh(sgd)
        res = w.fit(moons, CE, steps=9, batch_size=10, cache_features=cache, show_progress=False)
        assert res.feature_cache is cache
        runs.append(w.head.weight.detach().clone())
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kw, msg", [
    (dict(tau=11, total_steps=10), "beyond the run"),
    (dict(tau=0), "tau must be a positive int"),
    (dict(tau=2.5), "tau must be a positive int"),
    (dict(tau=2, tau0=0.5, total_steps=10), "exactly one of tau"),
    (dict(tau0=0.5), "needs total_steps"),
    (dict(tau0=1.5, total_steps=10), r"fraction in \(0, 1\)"),
    (dict(tau=2, epsilon=0.0), r"epsilon \(ε\) must be a positive"),
    (dict(tau=2, epsilon=-1e-3), r"epsilon \(ε\) must be a positive"),
    (dict(tau=2, epsilon=float("nan")), r"epsilon \(ε\) must be a positive"),
    (dict(tau=2, unit="batch"), "unit must be"),
    (dict(tau=2, gate_zeta=0), "gate_zeta"),
])
def test_bad_configuration_names_the_problem(sgd, kw, msg):
    with pytest.raises(ValueError, match=msg):
        EEWrapper(M.MLP(2, [4, 4], 2), sgd, **kw)


def test_bad_optimizers_models_and_runs(moons, sgd):
    m = M.MLP(2, [4, 4], 2)
    with pytest.raises(TypeError, match="optimizer factory"):
        EEWrapper(m, torch.optim.SGD(m.parameters(), lr=0.1), tau=2)
    with pytest.raises(TypeError, match="give required arguments"):
        EEWrapper(M.MLP(2, [4, 4], 2), lambda: torch.optim.SGD, tau=2)
    with pytest.raises(ValueError, match="no usable last layer"):
        EEWrapper(nn.Sequential(nn.Conv2d(1, 1, 1)), sgd, tau=2)
    w = EEWrapper(M.MLP(2, [4, 4], 2), sgd, tau=20)
    with pytest.raises(ValueError, match="tau = 20 steps is beyond the run .10 steps."):
        w.fit(moons, CE, steps=10, show_progress=False)
    with pytest.raises(ValueError, match="no targets"):
        w.fit(moons.X, CE, steps=30, show_progress=False)


def test_batchnorm_model_resumes_bit_identically_and_evaluation_leaves_statistics(small_cnn, images, sgd, tmp_path):
    import copy
    state0 = copy.deepcopy(small_cnn.state_dict())

    def make():
        m = copy.deepcopy(small_cnn)
        m.load_state_dict(state0)
        return EEWrapper(m, sgd, tau=4, total_steps=8, n=images.n, seed=1)
    ref = make()
    ref.fit(images, CE, batch_size=6, eval_every=1, show_progress=False)
    a = make()
    a.fit(images, CE, steps=3, batch_size=6, eval_every=2, show_progress=False)
    a.save(tmp_path / "bn.pt")
    b = make()
    b.load(tmp_path / "bn.pt")
    b.fit(images, CE, batch_size=6, eval_every=3, show_progress=False)
    for (n1, t1), (n2, t2) in zip(ref.model.state_dict().items(), b.model.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2), n1
    assert b.model.training and not b.model.bn.training   # fit keeps the mode; exploitation froze the BN


def test_transform_metrics_off_and_history(moons, sgd):
    calls = []

    def jitter(x):
        calls.append(x.shape[0])
        return x + 0.01
    w = _fresh(sgd)
    res = w.fit(moons, CE, steps=10, batch_size=12, transform=jitter, metrics=False, show_progress=False)
    assert calls == [12] * 10 and not res.feature_cache
    assert all(set(h) <= {"step", "phase", "loss", "after_switch"} for h in res.history)
    assert set(res.final) == {"step", "phase", "loss"}
    steps, losses = res.series("loss")
    assert steps == list(range(1, 11)) and len(losses) == 10
    with pytest.raises(ValueError, match="eval_every"):
        _fresh(sgd).fit(moons, CE, steps=2, eval_every=0, show_progress=False)
