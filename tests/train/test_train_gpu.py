"""GPU paths of the wrappers (skipped with the reason when no CUDA device is present)."""
import functools

import pytest
import torch
from torch import nn

import gconv.data as D
import gconv.models as M
from gconv.train import EEWrapper, TwoPhase


@pytest.mark.gpu
def test_ee_on_cuda_matches_cpu_perturbation_and_exploits_only_theta():
    data = D.load_builtin("two_moons", n=64, seed=0)
    sgd = functools.partial(torch.optim.SGD, lr=0.05)
    runs = {}
    for dev in ("cpu", "cuda"):
        m = M.MLP(2, [32, 32], 2, seed=0).to(dev)
        w = EEWrapper(m, sgd, tau=1, epsilon=0.01, seed=3)
        before = {n: p.detach().cpu().clone() for n, p in m.named_parameters()}
        w.optimizer.zero_grad()
        w.on_step_end()                   # switch without a step: θ + εδ only
        runs[dev] = {n: p.detach().cpu() for n, p in m.named_parameters()}
        delta = {n: runs[dev][n] - before[n] for n in before}
        runs[dev + "_delta"] = delta
        p0 = {n: p.detach().clone() for n, p in m.named_parameters()}
        w.fit(data.to(device=dev), nn.CrossEntropyLoss(), steps=5, show_progress=False)
        for n, p in m.named_parameters():
            assert torch.equal(p, p0[n]) == (n != "head.weight"), n
    for n in runs["cpu_delta"]:
        torch.testing.assert_close(runs["cpu_delta"][n], runs["cuda_delta"][n], rtol=0, atol=1e-7)


@pytest.mark.gpu
def test_two_phase_on_cuda_with_dense_rank_check():
    from gconv.train import dense_ntk_rank
    data = D.load_builtin("two_moons", n=32, seed=0).to(device="cuda")
    w = TwoPhase(M.MLP(2, [8, 8], 2, seed=0).cuda(), functools.partial(torch.optim.SGD, lr=0.05), tau=3,
                 total_steps=6, data=data.head(6), rank_check=dense_ntk_rank, check_every=1)
    w.fit(data, nn.CrossEntropyLoss(), show_progress=False)
    assert w.reference_rank == 12 and not w.violations
