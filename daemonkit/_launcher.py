"""The launcher's side of the readiness handshake (see :mod:`daemonkit.readiness`).

The launcher waits on the channel until the daemon says it is ready, reports
an error, dies, or stays silent past the timeout (then it is stopped), and
judges the outcome. Its public names are re-exported by
:mod:`daemonkit.readiness`.
"""

from __future__ import annotations

import os
import select
import sys
import time

from . import _posix
from ._lazy import errors

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from .readiness import Receiver

DEFAULT_READY_TIMEOUT = 90.0  # seconds; systemd's default TimeoutStartSec
STOP_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for a daemon that timed out
# After a successful exec, a program that dies within this many seconds is
# reported as a failed start (a missing config file, a bad option), not "up".
EXEC_GRACE = 0.2
EOF_GRACE = 2.0  # seconds a daemon whose channel closed has to finish dying
ERROR_KEY = "X_DAEMONKIT_ERROR="  # daemonkit's own field: the daemon's error report


class Outcome:
    """What the launcher learned: the daemon's pid and its status lines."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.statuses: list[str] = []


class PipeReceiver:
    """The launcher's end of the channel: framed messages from a pipe.

    Any object with ``fileno()`` and ``receive(deadline)`` can stand in for
    it in :func:`wait_until_ready`; :class:`daemonkit.notify.NotifySocketReceiver`
    does, for programs that speak sd_notify on their own.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = b""

    def fileno(self) -> int:
        return self.fd

    def receive(self, deadline: float) -> list[str] | None:
        """Block until at least one message or EOF; None on timeout, [] on EOF."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        messages: list[str] = []
        while True:
            while len(self._buffer) >= 4:
                size = int.from_bytes(self._buffer[:4], "big")
                if len(self._buffer) < 4 + size:
                    break
                messages.append(self._buffer[4 : 4 + size].decode("utf-8", "replace"))
                self._buffer = self._buffer[4 + size :]
            if messages:
                return messages
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not poller.poll(_posix.wait_ms(remaining)):
                continue
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return messages
            self._buffer += chunk


class MiddleReport:
    """What the intermediate process tells the launcher, on a pipe of its own.

    First the daemon's pid (``"<pid>\\n"``) as soon as it is forked; then,
    only if the daemon dies while the launcher still waits, the daemon's wait
    status (``"<status>\\n"``). Read only when needed: waiting for readiness
    costs the launcher a single wake-up.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._data = b""
        self._eof = False
        os.set_blocking(fd, False)

    def _read(self, block: bool) -> None:
        if self._eof:
            return
        if block:
            select.select([self.fd], [], [])
        while True:
            try:
                chunk = os.read(self.fd, 64)
            except BlockingIOError:
                return
            if not chunk:
                self._eof = True
                return
            self._data += chunk

    def _lines(self) -> list[bytes]:
        return [line for line in self._data.split(b"\n")[:-1] if line.isdigit()]

    def pid(self, wait: bool = False) -> int | None:
        """The daemon's pid, or None if it has not been told (yet).

        With ``wait``, block until the pid is told or the intermediate
        process is gone without telling it (it never forked the daemon).
        The daemon may close the channel before the intermediate process
        gets to write the pid: a second fork does not say which side runs
        first.
        """
        self._read(block=False)
        while wait and not self._eof and not self._lines():
            self._read(block=True)
        lines = self._lines()
        return int(lines[0]) if lines else None

    def exit_status(self) -> int | None:
        """The dead daemon's wait status (blocks until the report is complete)."""
        while not self._eof and len(self._lines()) < 2:
            self._read(block=True)
        lines = self._lines()
        return int(lines[1]) if len(lines) > 1 else None


def wait_until_ready(
    receiver: Receiver,
    middle_pid: int,
    middle: MiddleReport | None,
    timeout: float | None,
    show_status: bool = True,
    exec_is_ready: bool = False,
) -> Outcome:
    """Wait for READY=1 from ``receiver``; raise :class:`~daemonkit.errors.StartupError` otherwise.

    ``middle`` is the intermediate process's report (None when the program
    was not started by daemonkit's double fork). When the channel reaches
    end of file without READY, a daemon that is still alive has exec'd
    another program (the channel is close-on-exec): that counts as ready if
    ``exec_is_ready``; a dead one is reported with its exit status or signal.
    """
    outcome = Outcome()
    limit = DEFAULT_READY_TIMEOUT if timeout is None else timeout
    deadline = time.monotonic() + limit
    while True:
        messages = receiver.receive(deadline)
        if middle is not None:
            outcome.pid = outcome.pid or middle.pid()
        if messages is None:
            _stop_silent_daemon(receiver.fileno(), outcome.pid)
            raise errors.StartupError(
                f"the daemon{_pid_text(outcome.pid)} was not ready within {limit:g} s "
                "and was stopped; raise ready_timeout if it needs longer",
                pid=outcome.pid,
            )
        if not messages:  # end of file: the daemon closed its end, exec'd, or died
            _end_of_channel(outcome, middle_pid, middle, exec_is_ready)
            return outcome
        for message in messages:
            if message.startswith(ERROR_KEY):
                raise errors.StartupError(
                    f"the daemon{_pid_text(outcome.pid)} failed before it was ready:",
                    details=message[len(ERROR_KEY) :],
                    pid=outcome.pid,
                )
            fields = dict(line.partition("=")[::2] for line in message.splitlines())
            if "MAINPID" in fields and fields["MAINPID"].isdigit():
                outcome.pid = int(fields["MAINPID"])
            if "STATUS" in fields:
                outcome.statuses.append(fields["STATUS"])
                if show_status and fields.get("READY") != "1":
                    say(f"daemonkit: {fields['STATUS']}")
            if fields.get("READY") == "1":
                return outcome  # the intermediate process leaves when we do


def _end_of_channel(
    outcome: Outcome, middle_pid: int, middle: MiddleReport | None, exec_is_ready: bool
) -> None:
    """Judge an end of file on the channel: return if it means ready, else raise."""
    if outcome.pid is None and middle is not None:
        outcome.pid = middle.pid(wait=True)
    if outcome.pid is None:
        status = _posix.wait_child(middle_pid)
        raise errors.StartupError(
            "detaching failed: the intermediate process " + _posix.describe_wait_status(status)
        )
    # A dying process closes its descriptors a moment before it becomes a
    # zombie: give it that moment (and an exec'd program its grace period).
    if not _posix.exits_within(outcome.pid, EXEC_GRACE if exec_is_ready else EOF_GRACE):
        if exec_is_ready:
            return
        raise errors.StartupError(
            f"the daemon (pid {outcome.pid}) closed its readiness channel without "
            "saying it was ready",
            pid=outcome.pid,
        )
    exit_status = middle.exit_status() if middle is not None else None
    how = "exited" if exit_status is None else _posix.describe_wait_status(exit_status)
    when = "at once" if exec_is_ready else "before it was ready"
    raise errors.StartupError(f"the daemon (pid {outcome.pid}) {how} {when}", pid=outcome.pid)


def _pid_text(pid: int | None) -> str:
    return f" (pid {pid})" if pid else ""


def say(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


def _stop_silent_daemon(fd: int, pid: int | None) -> None:
    """SIGTERM, then SIGKILL after a grace period, a daemon that timed out.

    The daemon is signalled through a pidfd opened while its end of the
    channel is still open (so the pid still names it), never by a bare pid
    that might have been reused.
    """
    if pid is None:
        return
    import signal

    try:
        pidfd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        return
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if poller.poll(0):  # it hung up meanwhile: nothing to stop
            return
        for sig, grace in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, STOP_GRACE)):
            try:
                signal.pidfd_send_signal(pidfd, sig)
            except ProcessLookupError:
                return
            if _posix.pidfd_exits_within(pidfd, grace):
                return
    finally:
        os.close(pidfd)
