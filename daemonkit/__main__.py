"""``python -m daemonkit``: the ``daemonkit`` command."""

import sys

from .cli import main

sys.exit(main())
