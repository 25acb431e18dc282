"""Networks: the In-ResNet family (pre-activation CIFAR ResNets with interpolation
junctions) and NAIS-Net, all behind one registry."""

# Importing the model files registers their presets.
from odenets.models import naisnet as _naisnet  # noqa: F401
from odenets.models import resnet as _resnet  # noqa: F401
from odenets.models.registry import create_model, is_model, list_models, register_model

__all__ = ["create_model", "is_model", "list_models", "register_model"]
