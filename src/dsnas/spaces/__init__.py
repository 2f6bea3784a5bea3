"""Search spaces: the ShuffleNetV2 space of DSNAS and SPOS, and the child networks it yields."""

from .shufflenet import INIT_SCHEMES, OPS, ShuffleNetChild, ShuffleNetSettings, ShuffleNetSpace, init_weights

__all__ = ["INIT_SCHEMES", "OPS", "ShuffleNetChild", "ShuffleNetSettings", "ShuffleNetSpace", "init_weights"]
