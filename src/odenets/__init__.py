"""odenets: ODE-inspired robust and stable deep networks.

In-ResNet (Yang et al., ICML 2020) and NAIS-Net (Ciccone et al., NeurIPS 2018), with
training, honest robustness evaluation and the analysis figures of both papers.

Example:
    >>> import odenets
    >>> model = odenets.create_model("in_resnet20", num_classes=10)
    >>> model.coefficients().shape
    torch.Size([6])
"""

from odenets._version import __version__
from odenets.models.nais_blocks import NaisBlock, NaisConvBlock
from odenets.models.registry import create_model, list_models, register_model
from odenets.models.resnet import InResNetBlock
from odenets.training.runs import load_run

__all__ = [
    "create_model",
    "list_models",
    "register_model",
    "load_run",
    "InResNetBlock",
    "NaisBlock",
    "NaisConvBlock",
    "__version__",
]
