"""Seed 000 §2.2 / §3.4.1 in miniature: on the sine-wave set, gradient descent stays at a clearly
non-zero training error, while the EE wrapper with L-BFGS exploitation reaches zero."""
import functools

import pytest
import torch
from torch import nn

import gconv.data as D
import gconv.models as M
from gconv.train import EEWrapper, training_error

TAU, EXPLOIT = 300, 30


@pytest.mark.parametrize("seed", [0, 1])
def test_sine_wave_ee_with_lbfgs_reaches_zero_error_where_gd_does_not(seed, one_thread):
    data = D.load_builtin("sine", seed=seed)        # n = 100, x ~ U[−1, 1], y = 1{sin(20x) < 0}
    X, Y = data.tensors()
    loss = nn.BCEWithLogitsLoss()
    gd = functools.partial(torch.optim.SGD, lr=0.1)

    base = M.MLP(1, [100, 100, 100], 1, seed=seed)   # softplus ζ = 100
    opt = gd(base.parameters())
    for _ in range(TAU + EXPLOIT):
        opt.zero_grad()
        loss(base(X), Y).backward()
        opt.step()
    with torch.no_grad():
        base_err = training_error(base(X), Y)

    lbfgs = functools.partial(torch.optim.LBFGS, lr=1, max_iter=20, history_size=50, line_search_fn="strong_wolfe")
    w = EEWrapper(M.MLP(1, [100, 100, 100], 1, seed=seed), gd, lbfgs, tau=TAU, epsilon=0.01, seed=seed)
    res = w.fit(data, loss, steps=TAU + EXPLOIT, show_progress=False)
    at_switch = next(h for h in res.history if h["step"] == TAU)["error"]

    assert base_err > 0.1, f"plain GD unexpectedly fits the sine wave (error {base_err:.2f})"
    assert at_switch > 0.1          # exploration alone is no better
    assert res.final["error"] == 0.0 and res.final["loss"] < 1e-3 and w.phase == "exploitation"
    assert res.feature_cache      # exploitation ran on the cached fixed features z
