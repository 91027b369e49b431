"""pytest fixtures for testing daemons: start them for real, and always clean up.

Installing daemonkit registers this module as a pytest plugin (the
``pytest11`` entry point). It defines fixtures and nothing else: no hook, no
option, nothing autouse, and importing it imports no more of daemonkit, so
tests that do not ask for a fixture run exactly as they would without it.

``daemon_runner``
    A :class:`DaemonRunner`. It starts real daemons three ways: a command
    through ``daemonkit start`` (:meth:`~DaemonRunner.start_command`), a
    Python function inside a :class:`~daemonkit.DaemonContext`
    (:meth:`~DaemonRunner.start_callable`), or a program that detaches by
    itself (:meth:`~DaemonRunner.start_launcher`). Each returns once the
    daemon is ready, as a :class:`DaemonHandle` (pid, signals, stop, exit
    status, log, sd_notify messages). For the test's duration the test
    process is a child subreaper (``PR_SET_CHILD_SUBREAPER``), so detached
    daemons become its children: their exit status can be collected and a
    pid cannot be reused behind the test's back. At teardown, pass or fail,
    every daemon it started and every process that was orphaned to the test
    is killed by pid and reaped; processes the test did not start through
    the runner are reported with a :class:`DaemonLeftoverWarning`.
``fake_notify_socket``
    A :class:`NotifyRecorder`: a service manager's end of sd_notify, whose
    address is put in ``$NOTIFY_SOCKET`` for the test (and restored after),
    recording every message and its sender's pid.

The implementation is in private modules (``daemonkit._testing_*``), one
job each; this module re-exports their public names, and imports a module
only when a fixture is used or a name is first looked up: pytest imports
this one in every run of every project that has daemonkit installed.
"""

from __future__ import annotations

import sys

import pytest

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from collections.abc import Iterator

    from ._testing_adopt import ADOPTION_WAIT as ADOPTION_WAIT
    from ._testing_errors import DaemonExitedError, DaemonLeftoverWarning, DaemonStartError
    from ._testing_handle import TEARDOWN_WAIT as TEARDOWN_WAIT
    from ._testing_handle import DaemonHandle
    from ._testing_notify import NotifyRecorder
    from ._testing_reaper import ABANDON_WAIT as ABANDON_WAIT
    from ._testing_runner import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
    from ._testing_runner import DaemonRunner

__all__ = [
    "DaemonExitedError",
    "DaemonHandle",
    "DaemonLeftoverWarning",
    "DaemonRunner",
    "DaemonStartError",
    "NotifyRecorder",
    "daemon_runner",
    "fake_notify_socket",
]

# Where each public name (and each time limit) is defined. Its module is imported
# on the first look-up (``from daemonkit.testing import DaemonRunner``), by
# __getattr__. There is deliberately no __dir__: pytest looks up every name that
# dir() gives, in every plugin, to find fixtures, and would import them all.
_EXPORTS = {
    "DaemonExitedError": "_testing_errors",
    "DaemonLeftoverWarning": "_testing_errors",
    "DaemonStartError": "_testing_errors",
    "DaemonHandle": "_testing_handle",
    "TEARDOWN_WAIT": "_testing_handle",
    "NotifyRecorder": "_testing_notify",
    "DaemonRunner": "_testing_runner",
    "DEFAULT_TIMEOUT": "_testing_runner",
    "ADOPTION_WAIT": "_testing_adopt",
    "ABANDON_WAIT": "_testing_reaper",
}


def __getattr__(name: str) -> object:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    __import__(f"{__package__}.{module_name}")
    value = getattr(sys.modules[f"{__package__}.{module_name}"], name)
    globals()[name] = value
    return value


@pytest.fixture
def daemon_runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonRunner]:
    """Start real daemons; every one (and every orphan) is killed by pid at teardown.

    See :class:`DaemonRunner`. Teardown warns (:class:`DaemonLeftoverWarning`)
    about processes the test left running without starting them through it.
    """
    from ._testing_runner import DaemonRunner

    with DaemonRunner(tmp_path_factory.mktemp("daemon_runner")) as runner:
        yield runner


@pytest.fixture
def fake_notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyRecorder]:
    """A stand-in service manager: ``$NOTIFY_SOCKET`` names a socket the test reads.

    The variable is set in ``os.environ`` for the test (restored after), so
    :func:`daemonkit.notify.notify` and :func:`daemonkit.ready` in the test
    process, and programs it starts, report to the :class:`NotifyRecorder`.
    """
    from ._testing_notify import NotifyRecorder

    recorder = NotifyRecorder()
    monkeypatch.setenv("NOTIFY_SOCKET", recorder.address)
    try:
        yield recorder
    finally:
        recorder.close()
