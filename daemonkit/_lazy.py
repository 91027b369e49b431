"""A module imported on first use: for what only failures need.

``errors = LazyModule("daemonkit.errors")`` reads like the module
(``raise errors.DirectoryError(...)``) but imports it only when an attribute
is first looked up, so a daemon that starts without trouble never loads it.
Modules name the real module for type checkers under ``TYPE_CHECKING``.
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
