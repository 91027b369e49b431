"""A daemon started by :class:`~daemonkit.testing.DaemonRunner`: :class:`DaemonHandle`.

Part of the pytest plugin (see :mod:`daemonkit.testing`, which re-exports
:class:`DaemonHandle`). A handle knows its daemon by pid and pidfd: it
signals it, waits for its sd_notify messages, stops it as an operator
would, and reaps it (the test process is its parent while the runner is
open), so its exit status is known.
"""

from __future__ import annotations

import os
import signal
import time

from ._testing_errors import DaemonExitedError, describe_exit, indent, read_text, signal_name, tail
from ._testing_notify import WatchedProcessExited

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from pathlib import Path

    from ._testing_notify import NotifyRecorder

TEARDOWN_WAIT = 10.0  # seconds teardown spends killing and reaping


def pidfd_exited(pidfd: int) -> bool:
    """True if the process of ``pidfd`` has exited (a zombie has)."""
    import select

    return bool(select.select([pidfd], [], [], 0)[0])


def reap(pid: int, block: bool = False) -> int | None:
    """The wait status of our exited child ``pid``; None if it is not ours (or,
    without ``block``, still running)."""
    try:
        found, status = os.waitpid(pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        return None
    return status if found == pid else None


def signal_number(sig: int | str) -> int:
    """The number of ``sig`` (``signal.SIGHUP``, ``"HUP"``, ``"SIGHUP"``, 1)."""
    from .signals import resolve_signal

    return resolve_signal(sig, "signal")


class DaemonHandle:
    """A daemon started by :class:`DaemonRunner`, known by pid.

    Its pid stays valid for the handle's life: the daemon is a child of the
    test process (the runner makes it a subreaper), so the pid cannot be
    given to another process before the test reaps it, and it is signalled
    through a pidfd anyway.
    """

    def __init__(
        self,
        pid: int,
        *,
        name: str,
        pidfile: Path | None,
        log_path: Path | None,
        launcher_exit_code: int | None,
        launcher_stdout: str,
        launcher_stderr: str,
        notify: NotifyRecorder | None,
    ) -> None:
        self.pid = pid  #: the daemon's pid (the supervisor's, with ``respawn``)
        self.name = name  #: a name for messages
        self.pidfile = pidfile  #: its pidfile, if it has one
        self.log_path = log_path  #: the file its output goes to (None if not a known file)
        self.launcher_exit_code = launcher_exit_code  #: how the launching process exited
        self.launcher_stdout = launcher_stdout  #: what it printed
        self.launcher_stderr = launcher_stderr  #: what it printed on stderr
        self.notify = notify  #: the recorder of its sd_notify messages (``notify=True``)
        self.exit_status: int | None = None  #: once reaped: exit code, or -N for signal N
        self._reaped = False
        self._pidfd: int | None = os.pidfd_open(pid)

    def __repr__(self) -> str:
        state = "running" if self.alive() else describe_exit(self.exit_status)
        return f"<DaemonHandle {self.name} pid {self.pid} {state}>"

    def alive(self) -> bool:
        """True until the daemon exits (a zombie counts as exited)."""
        return self._pidfd is not None and not pidfd_exited(self._pidfd)

    def children(self) -> list[int]:
        """The daemon's live child processes (a supervisor's program, workers)."""
        from ._posix import children_of

        return children_of(self.pid) if self.alive() else []

    def log(self) -> str:
        """What the daemon wrote to :attr:`log_path` so far ("" if none)."""
        return read_text(self.log_path)

    def signal(self, sig: int | str) -> None:
        """Send ``sig`` (``signal.SIGHUP``, ``"HUP"``, ``"SIGHUP"``, 1) to the daemon.

        Raises :class:`DaemonExitedError` if it has exited.
        """
        number = signal_number(sig)
        if self._pidfd is None or not self.alive():
            raise DaemonExitedError(
                f"cannot signal {self.name} (pid {self.pid}): it {describe_exit(self._collect())}",
                self.exit_status,
            )
        signal.pidfd_send_signal(self._pidfd, number)

    def wait_exit(self, timeout: float = 10.0) -> int | None:
        """Wait until the daemon exits and reap it; its :attr:`exit_status`.

        The status is the exit code, or ``-N`` if signal ``N`` killed it
        (as ``subprocess`` reports it); None if the test could not reap it.
        Raises ``TimeoutError`` if it is still running after ``timeout``.
        """
        from ._posix import pidfd_exits_within

        if self._pidfd is not None and not pidfd_exits_within(self._pidfd, timeout):
            raise TimeoutError(f"{self.name} (pid {self.pid}) still runs after {timeout:g} s")
        return self._collect()

    def stop(self, timeout: float = 10.0, sig: int | str = "TERM") -> int | None:
        """Stop the daemon as an operator would; its exit status.

        With a pidfile the daemon holds, through :func:`daemonkit.control.stop`
        (``daemonkit stop``); otherwise ``sig`` is sent to its pid. A daemon
        still running ``timeout`` seconds later is killed (SIGKILL) and
        ``TimeoutError`` is raised: a daemon that does not stop when told to
        is a bug the test should see.
        """
        number = signal_number(sig)
        if not self.alive():
            return self._collect()
        began = time.monotonic()
        if self.pidfile is not None and self._holds_pidfile():
            from . import control

            control.stop(self.pidfile, sig=number, timeout=timeout)
        else:
            try:
                self.signal(number)
            except DaemonExitedError:
                pass
        try:
            return self.wait_exit(max(0.0, timeout - (time.monotonic() - began)))
        except TimeoutError:
            self.kill()
            raise TimeoutError(
                f"{self.name} (pid {self.pid}) did not exit within {timeout:g} s of "
                f"{signal_name(number)}; it was killed"
            ) from None

    def kill(self) -> int | None:
        """SIGKILL the daemon and reap it; its exit status."""
        try:
            self.signal(signal.SIGKILL)
        except DaemonExitedError:
            pass
        return self.wait_exit(TEARDOWN_WAIT)

    def notify_messages(self) -> list[str]:
        """Every sd_notify line the daemon sent so far (started with ``notify=True``)."""
        return self._recorder().messages()

    def wait_for_message(self, line: str, timeout: float = 10.0, *, since: int = 0) -> str:
        """Wait for an sd_notify line from the daemon; see :meth:`NotifyRecorder.wait_for`.

        Raises :class:`DaemonExitedError` at once if the daemon exits first.
        """
        recorder = self._recorder()
        try:
            return recorder._wait(line, timeout, since, self._pidfd)
        except WatchedProcessExited:
            status = self._collect()
            raise DaemonExitedError(
                f"{self.name} (pid {self.pid}) {describe_exit(status)} before it sent "
                f"{line!r}; it sent {recorder.messages()[since:]!r}; its log:\n"
                + indent(tail(self.log())),
                status,
            ) from None

    def _recorder(self) -> NotifyRecorder:
        if self.notify is None:
            raise RuntimeError(f"{self.name} was not started with notify=True")
        return self.notify

    def _holds_pidfile(self) -> bool:
        from .pidfile import PIDFile

        assert self.pidfile is not None
        return PIDFile(str(self.pidfile)).holder().pid == self.pid

    def _collect(self) -> int | None:
        """Reap the daemon if it has exited; its exit status (None if unknown)."""
        if not self._reaped and self._pidfd is not None and pidfd_exited(self._pidfd):
            self._record(reap(self.pid, block=True))  # it exited: no wait to speak of
        return self.exit_status

    def _record(self, wait_status: int | None) -> None:
        """Note how the daemon ended: ``wait_status`` from whoever reaped it (None if unknown)."""
        self._reaped = True
        if wait_status is not None:
            self.exit_status = os.waitstatus_to_exitcode(wait_status)

    def _release(self) -> None:
        """At teardown: close the pidfd and stop the recorder of its messages."""
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self.notify is not None:
            self.notify.close()
