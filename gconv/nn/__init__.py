"""Drop-in modules: ``Softplus``, ``EEHead`` and ``convert_activations``."""
from gconv.nn.modules import EEHead, Softplus, convert_activations

__all__ = ["Softplus", "EEHead", "convert_activations"]
