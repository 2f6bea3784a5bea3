"""Search spaces, built by name."""

from .shufflenet import INIT_SCHEMES, OPS, ShuffleNetChild, ShuffleNetSettings, ShuffleNetSpace, init_weights

SPACES = {"shufflenet": ShuffleNetSpace}

__all__ = ["INIT_SCHEMES", "OPS", "SPACES", "ShuffleNetChild", "ShuffleNetSettings", "ShuffleNetSpace", "init_weights"]
