"""dsnas: Direct Neural Architecture Search without parameter retraining (Hu et al., CVPR 2020)."""

from .arch import Architecture, load_arch, save_arch
from .choice import Choice
from .cost import CostTable, cost_table
from .errors import DsnasError
from .search import DSNAS
from .spaces import ShuffleNetChild, ShuffleNetSpace

__version__ = "0.1.0"

__all__ = ["DSNAS", "Architecture", "Choice", "CostTable", "DsnasError", "ShuffleNetChild", "ShuffleNetSpace",
           "cost_table", "load_arch", "save_arch", "__version__"]
