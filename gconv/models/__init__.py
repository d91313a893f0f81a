"""Model zoo: pre-activation ResNet-18 with softplus(ζ), LeNet, fully connected nets, P-3L.

Every model is ``trunk → head`` (see :class:`FeatureModel`): ``model.features(x)`` is the last
hidden representation (``model.feature_dim`` wide, captured by a forward hook on the module named
``model.feature_layer == "trunk"``) and ``model.head`` the output layer, which
:class:`gconv.train.EEWrapper` replaces by a :class:`gconv.nn.EEHead`.

    PreActResNet18(in_channels=3, num_classes=10, zeta=100.0, hidden_width=None)   (resnet18(...))
    LeNet(in_channels=1, num_classes=10, input_size=28, width=1, zeta=100.0)
    MLP(in_features, widths, out_features, activation="softplus", zeta=100.0)
    P3L(d, m, D=None, scaling="paper" | "mf" | "ntk", activation="tanh")
    get_model(name, **kw)   by name: "resnet18", "lenet", "mlp", "p3l"
"""
from gconv.models._base import FeatureModel, make_activation
from gconv.models.lenet import LeNet
from gconv.models.mlp import MLP
from gconv.models.p3l import P3L
from gconv.models.resnet import PreActBlock, PreActResNet18, resnet18

MODELS = {"resnet18": PreActResNet18, "preact_resnet18": PreActResNet18, "lenet": LeNet, "mlp": MLP, "p3l": P3L}


def get_model(name: str, **kw):
    """Construct a zoo model by name (``resnet18``, ``lenet``, ``mlp``, ``p3l``) with keyword arguments."""
    key = name.lower().replace("-", "_")
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[key](**kw)


__all__ = ["FeatureModel", "PreActResNet18", "PreActBlock", "resnet18", "LeNet", "MLP", "P3L", "get_model",
           "make_activation", "MODELS"]
