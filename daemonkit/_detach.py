"""The double fork: launcher, intermediate session leader, daemon.

The launching process forks; the child starts a new session and forks
again; the grandchild is the daemon, which is not a session leader and so can
never acquire a controlling terminal. Unlike the classic recipe, neither
parent leaves at once:

- the launcher waits for the daemon's readiness on the channel
  (:mod:`daemonkit.readiness`) and exits 0, or prints why not and exits 1;
- the intermediate process stays the daemon's parent until the launcher is
  gone (it learns that from a pipe whose only writer is the launcher), so
  that if the daemon dies before it is ready, its exit status or signal is
  known and reported (on a pipe of its own, not the channel, whose end of
  file must mean that the daemon closed it). Then it exits and the daemon
  is adopted by init.
"""

from __future__ import annotations

import os
import select

from . import _posix, readiness
from ._lazy import errors

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from typing import Any, NoReturn


def _pipe_above_stdio() -> tuple[int, int]:
    """A close-on-exec pipe whose ends are not among fds 0-2.

    A launcher started with standard streams closed would otherwise get the
    channel there, and redirecting the daemon's streams would cut it.
    """
    ends = list(os.pipe())
    try:
        for index, fd in enumerate(ends):
            raised = _posix.above_stdio(fd)
            if raised != fd:
                os.close(fd)
                ends[index] = raised
    except BaseException:
        for fd in ends:
            os.close(fd)
        raise
    return ends[0], ends[1]


def _close_pairs(pipes: list[tuple[int, int]]) -> None:
    for pair in pipes:
        for fd in pair:
            os.close(fd)


def detach(
    ready_timeout: float | None,
    exec_is_ready: bool = False,
    notify: readiness.Receiver | None = None,
    lock: Any = None,
    mask: set[int] | None = None,
    keep: set[int] | None = None,
    top: int = 2,
) -> list[tuple[int, int]]:
    """Fork twice with a new session between; return only in the daemon.

    ``exec_is_ready``: the daemon will exec a program; its channel closing on
    a successful exec counts as ready (``daemonkit start``). ``notify``: then
    wait, on this receiver, for the program's own sd_notify ``READY=1``
    (``daemonkit start --notify``). ``lock``: the daemon's PIDFile, which
    the launcher removes if the start fails and the daemon is gone.
    ``mask``: the signal mask to restore in the launcher; the daemon keeps
    the signals blocked until its handlers are installed, and the
    intermediate process until it exits. Returns, in the daemon, the
    ``closerange`` calls that close every descriptor from 3 up to ``top``
    but ``keep`` and the channel (worked out before the fork).
    """
    pipes: list[tuple[int, int]] = []
    try:
        for _ in range(3):
            pipes.append(_pipe_above_stdio())
    except BaseException:
        _close_pairs(pipes)
        raise
    (channel_read, channel_write), (pid_read, pid_write), (hold_read, hold_write) = pipes
    kept = {*(keep or ()), channel_write}
    closing = _posix.close_ranges(kept, max(top, *kept, *(fd for pair in pipes for fd in pair)))
    try:
        first = _posix.fork("first fork")
    except BaseException:
        _close_pairs(pipes)
        raise
    if first > 0:
        if mask is not None:
            _posix.set_signal_mask(mask)
        for fd in (channel_write, pid_write, hold_read):
            os.close(fd)
        # hold_write stays open until this process exits.
        finish_launcher(channel_read, first, pid_read, ready_timeout, exec_is_ready, notify, lock)
    for fd in (channel_read, pid_read, hold_write):
        os.close(fd)
    try:
        _posix.new_session()
        second = _posix.fork("second fork")
    except BaseException as exc:
        readiness.adopt(channel_write)
        readiness.report_failure(exc)
        _posix.exit_now(1)
    if second > 0:
        # The intermediate process keeps the signals blocked: it runs no
        # Python code that could handle them, only polls, then leaves.
        _stay_until_launcher_leaves(second, pid_write, hold_read, channel_write)
    os.close(pid_write)
    os.close(hold_read)
    readiness.adopt(channel_write)
    return closing


def _stay_until_launcher_leaves(daemon: int, report: int, hold: int, channel: int) -> NoReturn:
    """The intermediate process: tell the daemon's pid, watch it, then leave.

    Its copy of the channel is closed at once, so that the launcher sees end
    of file when the daemon closes its own (exec, exit). It then sleeps in
    one poll until the launcher is gone (end of file on ``hold``) or the
    daemon has exited, whose wait status then goes on ``report``.
    """
    os.close(channel)
    try:
        os.write(report, f"{daemon}\n".encode())
        pidfd = os.pidfd_open(daemon)
    except OSError:  # no pidfds (Linux < 5.3): leave at once, as the classic recipe
        _posix.exit_now(0)
    poller = select.poll()
    poller.register(hold, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    if any(fd == pidfd for fd, _ in poller.poll()):
        status = _posix.wait_child(daemon)
        try:
            os.write(report, f"{status}\n".encode())
        except OSError:
            pass  # the launcher left meanwhile
    _posix.exit_now(0)


def finish_launcher(
    read_fd: int,
    middle_pid: int,
    pid_fd: int,
    ready_timeout: float | None,
    exec_is_ready: bool = False,
    notify: readiness.Receiver | None = None,
    lock: Any = None,
) -> NoReturn:
    """In the launcher: wait for the daemon, then exit with its verdict."""
    middle = readiness.MiddleReport(pid_fd)
    try:
        outcome = readiness.wait_until_ready(
            readiness.PipeReceiver(read_fd),
            middle_pid,
            middle,
            ready_timeout,
            exec_is_ready=exec_is_ready,
        )
        if notify is not None and outcome.pid is not None:
            watch = getattr(notify, "watch", None)
            if watch is not None:
                watch(outcome.pid)
            readiness.wait_until_ready(notify, middle_pid, middle, ready_timeout)
    except BaseException as exc:
        if isinstance(exc, errors.StartupError):
            readiness.say(f"daemonkit: {exc}")
            if lock is not None and (exc.pid is None or _posix.exits_within(exc.pid, 2.0)):
                # The launcher still shares the lock: removing the dead daemon's
                # pidfile now cannot race with a new start.
                lock.release()
        else:  # e.g. KeyboardInterrupt while waiting
            readiness.say(f"daemonkit: stopped waiting for the daemon: {exc!r}")
        _posix.exit_now(1)
    _posix.exit_now(0)
