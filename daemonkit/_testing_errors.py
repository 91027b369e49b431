"""The errors and the warning of :mod:`daemonkit.testing`, and the texts they quote.

Part of the pytest plugin (see :mod:`daemonkit.testing`, which re-exports
the public names). The exceptions say what went wrong with a daemon in
words a test report can show: how it exited, the end of its log, what its
launcher printed. The helpers that make those words live here too, since
every other part of the plugin needs them.
"""

from __future__ import annotations

import pytest

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from pathlib import Path


class DaemonStartError(Exception):
    """A daemon did not start: the launcher failed, or the daemon died or stayed silent.

    The message says what happened and quotes the launcher's stderr and the
    end of the daemon's log; the same are attributes, for assertions.
    """

    def __init__(
        self,
        message: str,
        *,
        launcher_exit_code: int | None = None,
        launcher_stderr: str = "",
        log: str = "",
        exit_status: int | None = None,
    ) -> None:
        details = [message]
        if launcher_stderr.strip():
            details.append("launcher stderr:\n" + indent(launcher_stderr))
        if log.strip():
            details.append("daemon log (end):\n" + indent(tail(log)))
        super().__init__("\n".join(details))
        self.launcher_exit_code = launcher_exit_code
        self.launcher_stderr = launcher_stderr
        self.log = log
        self.exit_status = exit_status


class DaemonExitedError(Exception):
    """The daemon exited while the test waited for it (or tried to signal it)."""

    def __init__(self, message: str, exit_status: int | None) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class DaemonLeftoverWarning(pytest.PytestWarning):
    """Teardown killed processes the test left running but had not started through
    ``daemon_runner`` (a daemon's orphaned child, a daemon started some other way),
    or could not kill some."""


# Their public home is daemonkit.testing: tracebacks, reprs and warning filters
# (``-W error::daemonkit.testing.DaemonLeftoverWarning``) name them by it.
for _public in (DaemonStartError, DaemonExitedError, DaemonLeftoverWarning):
    _public.__module__ = "daemonkit.testing"
del _public


def indent(text: str) -> str:
    """``text`` with every line indented by four spaces, for a quote in a message."""
    return "".join(f"    {line}\n" for line in text.rstrip("\n").splitlines())


def tail(text: str, lines: int = 25) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def read_text(path: Path | None) -> str:
    """The contents of ``path`` (a log, what a launcher printed); "" if none or unreadable."""
    if path is None:
        return ""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def describe_exit(exit_status: int | None) -> str:
    """``exited with status 3``, ``was killed by SIGKILL``, or unknown."""
    if exit_status is None:
        return "exited (status unknown: not a child of the test)"
    if exit_status < 0:
        return f"was killed by {signal_name(-exit_status)}"
    return f"exited with status {exit_status}"


def signal_name(number: int) -> str:
    """``SIGTERM`` for 15."""
    from ._posix import signal_name

    return signal_name(number)
