"""Search spaces, built by name."""

from .shufflenet import OPS, ShuffleNetChild, ShuffleNetSettings, ShuffleNetSpace

SPACES = {"shufflenet": ShuffleNetSpace}

__all__ = ["OPS", "SPACES", "ShuffleNetChild", "ShuffleNetSettings", "ShuffleNetSpace"]
