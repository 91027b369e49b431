"""Names and arguments for :class:`~daemonkit.testing.DaemonRunner`'s starts.

Part of the pytest plugin (see :mod:`daemonkit.testing`): a daemon's name
from its command, file names from it, where its output goes, and
``daemonkit start``'s command-line options from the keywords of
:meth:`~daemonkit.testing.DaemonRunner.start_command`.
"""

from __future__ import annotations

import os
from pathlib import Path  # loaded by pytest already

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any


def command_name(argv: Sequence[str]) -> str:
    """``echo_server.py`` for ``python examples/echo_server.py ...``, else the program."""
    program = os.path.basename(argv[0])
    if program.startswith("python") and len(argv) > 1 and not argv[1].startswith("-"):
        return os.path.basename(argv[1])
    return program


def safe_name(name: str) -> str:
    """``name`` made fit for a file name: letters, digits and ``-_.`` stay, the rest
    become ``_``; at most 40 characters ("daemon" if none is left)."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return cleaned[:40] or "daemon"


def log_target(options: dict[str, Any], default: Path) -> Path | None:
    """Where the daemon's output goes: ``default`` for both streams unless the
    caller chose (then the file it named for stderr, or stdout; None if not a path)."""
    given = options.get("stderr") or options.get("stdout")
    if given is None:
        options["stdout"] = options["stderr"] = str(default)
        return default
    return Path(given) if isinstance(given, (str, os.PathLike)) else None


def option_arguments(options: Mapping[str, Any]) -> list[str]:
    """``daemonkit start`` options from keywords: ``umask=0o027`` is ``--umask 027``,
    ``respawn=True`` is ``--respawn``, ``backoff=(0.1, 2)`` is ``--backoff 0.1..2``."""
    arguments: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            arguments.append(flag)
        elif key == "umask" and isinstance(value, int):
            arguments += [flag, format(value, "03o")]
        elif key == "backoff" and isinstance(value, (tuple, list)):
            arguments += [flag, f"{value[0]}..{value[1]}"]
        elif isinstance(value, (list, tuple)):
            for item in value:
                arguments += [flag, os.fspath(item)]
        else:
            arguments += [flag, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]
    return arguments
