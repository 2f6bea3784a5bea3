"""dsnas: Direct Neural Architecture Search without parameter retraining (Hu et al., CVPR 2020).

The public names are imported on first use, so that the command line answers bad input
without loading PyTorch first.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "Architecture": "arch", "load_arch": "arch", "save_arch": "arch",
    "Choice": "choice", "active_path": "choice", "freeze": "choice",
    "CostTable": "cost", "cost_table": "cost",
    "DsnasError": "errors",
    "DSNAS": "search",
    "random_search": "select", "evolution_search": "select",
    "ShuffleNetChild": "spaces", "ShuffleNetSpace": "spaces",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dsnas' has no attribute {name!r}")


def __dir__():
    return __all__
