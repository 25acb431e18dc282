"""odenets: ODE-inspired robust and stable deep networks.

In-ResNet (Yang et al., ICML 2020) and NAIS-Net (Ciccone et al., NeurIPS 2018), with
training, honest robustness evaluation and the analysis figures of both papers.

Example:
    >>> import odenets
    >>> model = odenets.create_model("in_resnet20", num_classes=10)
    >>> model.coefficients().shape
    torch.Size([6])
"""

from odenets.models import create_model, list_models, register_model

__version__ = "0.1.0"

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

# Building blocks for custom networks: public name -> the module that defines it.
_BLOCKS = {
    "InResNetBlock": "odenets.models.resnet",
    "NaisBlock": "odenets.models.nais_blocks",
    "NaisConvBlock": "odenets.models.nais_blocks",
}


def __getattr__(name: str):
    # Imported lazily so that `import odenets` stays light and free of cycles.
    if name == "load_run":
        from odenets.training import load_run

        return load_run
    if name in _BLOCKS:
        import importlib

        return getattr(importlib.import_module(_BLOCKS[name]), name)
    raise AttributeError(f"module 'odenets' has no attribute {name!r}")
