"""The former home of the wire's values (before the wire package): ``zchat.protocol``
names what ``zchat.wire`` does, so that code written against it (a bot's
``from zchat.protocol import MessagePosted``) keeps working. New code imports
``zchat.wire`` (docs/design.md, "The wire codec"). Importing this module warns once.
"""

from __future__ import annotations

import warnings

from zchat.wire import *  # noqa: F403  (the whole public wire, as this module was)
from zchat.wire import __all__ as __all__  # noqa: F401

warnings.warn("zchat.protocol is zchat.wire now; import zchat.wire", DeprecationWarning,
              stacklevel=2)
