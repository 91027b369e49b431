"""A module imported on first use: for what only failures need.

``from ._lazy import errors`` gives an object that reads like
:mod:`daemonkit.errors` (``raise errors.DirectoryError(...)``) but imports it
only when an attribute is first looked up, so a daemon that starts without
trouble never loads it. Type checkers see the real module.
"""

from __future__ import annotations

import sys


class LazyModule:
    """Stands for the module ``name`` until an attribute is looked up."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> object:
        module = sys.modules.get(self._name)
        if module is None:
            __import__(self._name)
            module = sys.modules[self._name]
        return getattr(module, attribute)


TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from . import errors as errors
else:
    errors = LazyModule("daemonkit.errors")  # loaded only if something fails
