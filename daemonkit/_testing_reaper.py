"""The test process as a child subreaper: its new children, killed and reaped by pid.

Part of the pytest plugin (see :mod:`daemonkit.testing`). While a
:class:`~daemonkit.testing.DaemonRunner` is open, the test process is a
child subreaper (``PR_SET_CHILD_SUBREAPER``), so every detached daemon and
every orphan of its descendants becomes its child. :class:`ChildReaper`
notes which children it had before, and at the end (or after a failed
start) kills by pid and reaps every child that came since: a pid that is an
unreaped child of ours cannot have been given to another process.
"""

from __future__ import annotations

import os
import signal
import time

from ._testing_errors import DaemonExitedError
from ._testing_handle import TEARDOWN_WAIT, reap

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from ._testing_handle import DaemonHandle

    Snapshot = set[tuple[int, int | None]]  # children, each with its start time

ABANDON_WAIT = 2.0  # seconds what a failed start left has to exit by itself


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (with the pid, a process's identity); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rpartition(b")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def describe_process(pid: int) -> str:
    """``pid 123 (sleep 60)``, for a message."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            words = cmdline.read().rstrip(b"\0").split(b"\0")
    except OSError:
        words = []
    command = " ".join(word.decode(errors="replace") for word in words)[:200]
    return f"pid {pid} ({command or '?'})"


class ChildReaper:
    """Makes the test process a subreaper and cleans up the children it gains.

    :meth:`start` notes the children the test process has already: they
    are left alone. :meth:`finish` kills and reaps every child that came
    since; :meth:`abandon` does the same after a failed start, for the
    children that came during it.
    """

    def __init__(self) -> None:
        self._was_subreaper = False
        self._baseline: Snapshot = set()

    def start(self) -> None:
        """Become a subreaper and note which children the test process has already."""
        from . import _posix

        self._was_subreaper = _posix.is_subreaper()
        if not self._was_subreaper and not _posix.set_subreaper(True):
            raise RuntimeError("daemon_runner needs Linux's PR_SET_CHILD_SUBREAPER")
        self._baseline = {(pid, start_time(pid)) for pid in self.children()}

    def finish(self, daemons: list[DaemonHandle]) -> str:
        """Kill and reap ``daemons`` and every child that came since :meth:`start`.

        Each handle is given its exit status and its descriptors are closed;
        the subreaper flag is given back unless the test process had it
        before. Returns a description of what should not have been there
        (children not among ``daemons``, processes that would not die), ""
        if nothing.
        """
        tracked = {handle.pid: handle for handle in daemons}
        strays = [
            describe_process(pid)
            for pid in self.new_children()
            if pid not in tracked and running(pid)
        ]
        for handle in daemons:
            if handle.alive():
                try:
                    handle.signal(signal.SIGKILL)
                except (DaemonExitedError, ProcessLookupError):
                    pass
        deadline = time.monotonic() + TEARDOWN_WAIT
        stuck: list[int] = []
        while True:  # killing one may orphan its children to us: until none is left
            children = self.new_children()
            if not children:
                break
            for pid in children:
                try:
                    os.kill(pid, signal.SIGKILL)  # our unreaped child: the pid is still its
                except ProcessLookupError:
                    pass
            for pid in children:
                self.reap_child(pid, tracked, deadline)
            if time.monotonic() >= deadline:  # something will not die, or keeps forking
                stuck = [pid for pid in self.new_children() if running(pid)]
                break
        for handle in daemons:
            if not handle._reaped:
                handle._collect()
            handle._release()
        if not self._was_subreaper:
            from . import _posix

            _posix.set_subreaper(False)
        report = []
        if strays:
            report.append(
                "daemon_runner killed processes the test left running but did not start "
                "through it: " + ", ".join(strays)
            )
        if stuck:
            report.append(
                "daemon_runner could not kill: " + ", ".join(map(describe_process, stuck))
            )
        return "; ".join(report)

    def children(self) -> list[int]:
        """The test process's children (zombies included)."""
        from ._posix import children_of

        return children_of(os.getpid())

    def snapshot(self) -> Snapshot:
        """The test process's children now, each with its start time."""
        return {(pid, start_time(pid)) for pid in self.children()}

    def new_children(self, since: Snapshot | None = None) -> list[int]:
        """Children that came after :meth:`start` (or after ``since``)."""
        known = self._baseline if since is None else since
        return [pid for pid in self.children() if (pid, start_time(pid)) not in known]

    def abandon(self, snapshot: Snapshot, daemons: list[DaemonHandle]) -> None:
        """After a failed start: what it left (a daemon still dying after it
        reported its error, the double fork's intermediate) gets a moment to
        exit, then SIGKILL; all is reaped. None of it is the test's leftover.

        ``snapshot`` is the children from before the start; ``daemons`` are
        left alone (a handle is reaped at :meth:`finish`).
        """
        tracked = {handle.pid: handle for handle in daemons}
        deadline = time.monotonic() + ABANDON_WAIT
        while True:
            left = [pid for pid in self.new_children(snapshot) if pid not in tracked]
            if not any(running(pid) for pid in left) or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        reap_by = time.monotonic() + TEARDOWN_WAIT
        while left:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)  # our unreaped child: the pid is still its
                except ProcessLookupError:
                    pass
                self.reap_child(pid, tracked, reap_by)
            if time.monotonic() >= reap_by:
                break
            left = [pid for pid in self.new_children(snapshot) if pid not in tracked]

    @staticmethod
    def reap_child(pid: int, tracked: dict[int, DaemonHandle], deadline: float) -> None:
        """Wait (until ``deadline``) for our child ``pid`` to die and reap it."""
        from ._posix import exits_within

        exits_within(pid, max(0.0, deadline - time.monotonic()))
        status = reap(pid)
        if status is not None and pid in tracked:
            tracked[pid]._record(status)
