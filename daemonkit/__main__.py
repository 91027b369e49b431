"""``python -m daemonkit``: the ``daemonkit`` command."""

from .cli import run

run()
