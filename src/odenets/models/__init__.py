"""Networks: the In-ResNet family (pre-activation CIFAR ResNets with interpolation
junctions) and NAIS-Net, all behind one registry (`create_model`, `list_models`)."""

from odenets.models.nais_blocks import NaisBlock, NaisConvBlock
from odenets.models.naisnet import NaisMLP, NaisNet, SharedResNet
from odenets.models.registry import create_model, is_model, list_models, register_model
from odenets.models.resnet import InResNetBlock, PreActResNet

__all__ = [
    "InResNetBlock",
    "NaisBlock",
    "NaisConvBlock",
    "NaisMLP",
    "NaisNet",
    "PreActResNet",
    "SharedResNet",
    "create_model",
    "is_model",
    "list_models",
    "register_model",
]
