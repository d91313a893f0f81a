"""Small models and float64 references shared by the gconv.jacobian tests."""
import copy

import torch
from torch import nn
from torch.func import functional_call, jacrev

from gconv.nn import Softplus


class MLP(nn.Module):
    def __init__(self, d_in=5, widths=(7, 6), m_y=3, zeta=100.0):
        super().__init__()
        layers, d = [], d_in
        for w in widths:
            layers += [nn.Linear(d, w), Softplus(zeta)]
            d = w
        layers.append(nn.Linear(d, m_y))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class CNNBN(nn.Module):
    """Conv → BN → softplus → conv(stride 2) → BN → softplus → linear; inputs (B, 2, 7, 7)."""

    def __init__(self, m_y=3):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.b1 = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, stride=2)
        self.b2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 3 * 3, m_y)
        self.act = Softplus(100.0)

    def forward(self, x):
        h = self.act(self.b1(self.c1(x)))
        h = self.act(self.b2(self.c2(h)))
        return self.fc(h.flatten(1))


class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.act = Softplus(100.0)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if (stride != 1 or cin != cout) else None

    def forward(self, x):
        o = self.act(self.bn1(x))
        sc = self.shortcut(o) if self.shortcut is not None else x
        o = self.conv1(o)
        o = self.conv2(self.act(self.bn2(o)))
        return o + sc


class PreActResNet(nn.Module):
    """A tiny pre-activation ResNet with softplus(ζ = 100); inputs (B, 1, 8, 8)."""

    def __init__(self, m_y=3, w=4):
        super().__init__()
        self.stem = nn.Conv2d(1, w, 3, 1, 1, bias=False)
        self.layer1 = PreActBlock(w, w, 1)
        self.layer2 = PreActBlock(w, 2 * w, 2)
        self.bn = nn.BatchNorm2d(2 * w)
        self.act = Softplus(100.0)
        self.fc = nn.Linear(2 * w, m_y)

    def forward(self, x):
        o = self.layer2(self.layer1(self.stem(x)))
        o = self.act(self.bn(o)).mean((2, 3))
        return self.fc(o)


def warm_bn(model, x, steps=3):
    """Give BatchNorm layers non-trivial running statistics, then return the model in eval mode."""
    model.train()
    with torch.no_grad():
        for k in range(steps):
            model(x + 0.1 * k)
    return model.eval()


def make(kind, dtype=torch.float64, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if kind == "mlp":
        m, X = MLP(), torch.randn(n, 5, generator=g)
    elif kind == "cnn":
        m, X = CNNBN(), torch.randn(n, 2, 7, 7, generator=g)
    elif kind == "resnet":
        m, X = PreActResNet(), torch.randn(n, 1, 8, 8, generator=g)
    else:
        raise KeyError(kind)
    m = m.to(dtype)
    X = X.to(dtype)
    if kind != "mlp":
        warm_bn(m, X)
    return m, X


def reference_jacobian(model, X, names=None):
    """Dense float64 J (n·m_y, d) by torch.func.jacrev over the whole batch, rows sample-major.

    Train-mode BatchNorm: a copy of the model with running statistics off (pure batch statistics)."""
    model = copy.deepcopy(model).double()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    params = dict(model.named_parameters())
    names = [n for n, p in params.items() if p.requires_grad] if names is None else names
    theta = {n: params[n].detach() for n in names}
    X = X.double()

    def f(th):
        return functional_call(model, th, (X,), strict=False).reshape(-1)
    jac = jacrev(f)(theta)
    N = f(theta).numel()
    return torch.cat([jac[n].reshape(N, -1) for n in names], dim=1)


def reference_jacobian_autograd(model, X, names=None):
    """An independent reference by torch.autograd.functional.jacobian (classic autograd) on a copy."""
    model = copy.deepcopy(model).double()
    params = dict(model.named_parameters())
    names = [n for n, p in params.items() if p.requires_grad] if names is None else names
    X = X.double()

    def f(*ps):
        return functional_call(model, dict(zip(names, ps)), (X,), strict=False).reshape(-1)
    jac = torch.autograd.functional.jacobian(f, tuple(params[n].detach() for n in names))
    return torch.cat([j.reshape(j.shape[0], -1) for j in jac], dim=1)
