"""Search spaces, built by name through the registry (`build`, `build_child`, `settings_of`):
the ShuffleNetV2 space of DSNAS and SPOS, MMRazor's SPOS MobileNet, the NAS-Bench-201 cell
space, and the child networks they yield; installed packages add theirs (`space_names`)."""

from .registry import (DATA_SETTINGS, MAX_MODEL_GB, SPACES, Footprint, SpaceMixin, SpaceSettings, build, build_child,
                       register_space, settings_of, space_class, space_names)
from . import shufflenet  # noqa: E402  (registers the space)
from . import nb201  # noqa: E402,F401  (registers the space)
from . import mobilenet  # noqa: E402,F401  (registers the space)
from .shufflenet import OPS, ShuffleNetChild, ShuffleNetSettings, ShuffleNetSpace, init_weights
from ..config import DEFAULT_SPACE  # what a file that names no space (an MMRazor subnet) is read in

__all__ = ["DATA_SETTINGS", "DEFAULT_SPACE", "Footprint", "MAX_MODEL_GB", "OPS", "SPACES",
           "ShuffleNetChild", "ShuffleNetSettings", "ShuffleNetSpace", "SpaceMixin", "SpaceSettings", "build",
           "build_child", "init_weights", "register_space", "settings_of", "space_class", "space_names"]
