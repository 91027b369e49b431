"""Control a daemon through its pidfile: status, stop, reload (the CLI's engine).

Every decision is taken from the pidfile's lock, never from its content
alone: only a process that holds the lock (and has the file open) is
"running", and it is signalled through a pidfd opened while the lock is
re-checked, so a pid the kernel has since given to an unrelated process is
never signalled. Waiting for a process to exit polls its pidfd: no sleeps.

Results carry LSB exit codes (``status``: 0 running, 1 dead with a pidfile,
3 not running, 4 unknown; ``stop``: 0 stopped or not running, 1 not stopped).
"""

from __future__ import annotations

import os
import select
import signal
import time

from . import _posix
from .errors import ConfigurationError
from .pidfile import PIDFile, PIDStatus
from .signals import resolve_signal

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from typing import Any

__all__ = ["ControlStatus", "StopResult", "parse_schedule", "reload", "status", "stop"]

LSB_RUNNING, LSB_DEAD, LSB_NOT_RUNNING, LSB_UNKNOWN = 0, 1, 3, 4


def _uptime(pid: int) -> float | None:
    """Seconds since ``pid`` started, from /proc (None if it cannot be told)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            started = int(stat.read().rpartition(b")")[2].split()[19])
        with open("/proc/uptime", "rb") as uptime:
            now = float(uptime.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, now - started / os.sysconf("SC_CLK_TCK"))


def _human(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days}d"] if days else []
    parts += [f"{hours}h"] if hours or days else []
    parts += [f"{minutes}m"] if minutes or hours or days else []
    return "".join([*parts, f"{secs}s"])


class ControlStatus:
    """A daemon's state as its pidfile's lock tells it, with its LSB code."""

    def __init__(self, pidfile: str, found: PIDStatus) -> None:
        self.pidfile = pidfile
        self.state = found.state
        self.pid = found.pid
        self.reason = found.reason
        self.uptime = _uptime(found.pid) if found.running and found.pid else None
        self.supervised: list[int] | None = None  # a supervisor's program, if it is one
        holder = found.pid if found.state == PIDStatus.RUNNING else None
        if holder and _posix.process_name(holder) == _posix.SUPERVISOR_NAME:
            self.supervised = _posix.supervised_programs(holder)
        self.code = {
            PIDStatus.RUNNING: LSB_RUNNING,
            PIDStatus.STARTING: LSB_RUNNING,
            PIDStatus.STALE: LSB_DEAD,
            PIDStatus.ABSENT: LSB_NOT_RUNNING,
        }.get(found.state, LSB_UNKNOWN)

    @property
    def running(self) -> bool:
        return self.code == LSB_RUNNING

    def describe(self) -> str:
        """One line for people."""
        if self.state == PIDStatus.RUNNING:
            up = f", up {_human(self.uptime)}" if self.uptime is not None else ""
            if self.supervised is None:
                return f"running (pid {self.pid}{up})"
            if not self.supervised:
                return f"running (supervisor pid {self.pid}{up}; its program is restarting)"
            children = ", ".join(map(str, self.supervised))
            return f"running (supervisor pid {self.pid}{up}; program pid {children})"
        if self.state == PIDStatus.STALE and self.reason:
            return f"dead: {self.reason}"
        return {
            PIDStatus.STARTING: "starting (pidfile locked, no pid written yet)",
            PIDStatus.STALE: f"dead, but the pidfile {self.pidfile} remains (stale)",
            PIDStatus.ABSENT: "not running",
            PIDStatus.UNVERIFIED: (
                f"unknown: {self.pidfile} names pid {self.pid}, which is alive but does "
                "not hold the pidfile's lock (another tool's pidfile, or a reused pid)"
            ),
        }.get(self.state, f"unknown: {self.pidfile}: {self.reason}")

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        return {
            "pidfile": self.pidfile,
            "state": self.state,
            "pid": self.pid,
            "uptime": self.uptime,
            "supervisor": self.supervised is not None,
            "program_pids": self.supervised,
            "code": self.code,
            "description": self.describe(),
        }


def status(pidfile: str | os.PathLike[str]) -> ControlStatus:
    """The daemon's state, judged by the pidfile's lock."""
    path = os.fspath(pidfile)
    return ControlStatus(path, PIDFile(path).holder())


def parse_schedule(schedule: str, default_signal: str = "TERM") -> list[tuple[int, float]]:
    """start-stop-daemon's retry syntax: ``TERM/30/KILL/5`` or just ``30``.

    A bare number means: the default signal, that many seconds, then KILL
    for as long again.
    """
    parts = [part for part in schedule.split("/") if part]
    if not parts:
        raise ConfigurationError(f"empty retry schedule {schedule!r}")
    bare = parts[0].replace(".", "", 1)
    if len(parts) == 1 and bare.isascii() and bare.isdigit():
        seconds = check_wait(float(parts[0]), f"retry {schedule!r}")
        return [(resolve_signal(default_signal, "retry"), seconds), (signal.SIGKILL, seconds)]
    steps: list[tuple[int, float]] = []
    for index in range(0, len(parts), 2):
        name = parts[index]
        try:
            wait = float(parts[index + 1]) if index + 1 < len(parts) else 0.0
        except ValueError:
            raise ConfigurationError(
                f"retry schedule {schedule!r}: {parts[index + 1]!r} is not a number of seconds"
            ) from None
        check_wait(wait, f"retry schedule {schedule!r}")
        numeric = name.isascii() and name.isdigit()
        sig = resolve_signal(int(name) if numeric else name, f"retry {schedule!r}")
        steps.append((sig, wait))
    return steps


class StopResult:
    """What ``stop`` did: ``stopped`` also when nothing was running."""

    def __init__(self, pid: int | None, was_running: bool) -> None:
        self.pid = pid
        self.was_running = was_running
        self.stopped = not was_running
        self.signals: list[str] = []
        self.elapsed = 0.0
        self.message = "not running"

    @property
    def code(self) -> int:
        return 0 if self.stopped else 1


def _open_holder(path: str) -> tuple[ControlStatus, int | None]:
    """The pidfile's status, and a pidfd of its live holder (None if none).

    The holder is re-checked after ``pidfd_open``, so the pidfd names the
    process that held the lock, never a process that got its pid later.
    """
    before = PIDFile(path).holder()
    found = ControlStatus(path, before)
    if before.state != PIDStatus.RUNNING or before.pid is None:
        return found, None
    try:
        pidfd = os.pidfd_open(before.pid)
    except ProcessLookupError:  # it exited just now: judge the file again
        return ControlStatus(path, PIDFile(path).holder()), None
    after = PIDFile(path).holder()
    if after.state != PIDStatus.RUNNING or after.pid != before.pid:
        os.close(pidfd)
        return ControlStatus(path, after), None
    return found, pidfd


def _send(pid: int, pidfd: int, sig: int, group: bool) -> None:
    if group:
        if select.select([pidfd], [], [], 0)[0]:
            return  # it exited: its process group id may no longer be its own
        os.killpg(os.getpgid(pid), sig)
    else:
        signal.pidfd_send_signal(pidfd, sig)


def stop(
    pidfile: str | os.PathLike[str],
    sig: int | str = "TERM",
    retry: str | None = None,
    timeout: float = 30.0,
    group: bool = False,
) -> StopResult:
    """Stop the pidfile's live holder and wait until it is gone.

    Without ``retry``: ``sig``, then wait up to ``timeout`` seconds. With a
    ``retry`` schedule (``TERM/30/KILL/5``) each signal is sent in turn and
    waited for. ``group`` signals the daemon's whole process group.
    """
    path = os.fspath(pidfile)
    if retry:
        steps = parse_schedule(retry)
    else:
        steps = [(resolve_signal(_number(sig), "signal"), check_wait(timeout, "timeout"))]
    found, pidfd = _open_holder(path)
    settle_until = time.monotonic() + steps[0][1]
    while found.state == PIDStatus.STARTING and time.monotonic() < settle_until:
        # Locked with no pid: a start not yet written, or a stop removing the
        # file. Wait for either to finish (up to the first wait), then act.
        time.sleep(0.01)
        found, pidfd = _open_holder(path)
    if pidfd is None or found.pid is None:
        result = StopResult(None, was_running=False)
        if found.state == PIDStatus.STALE and not found.reason:
            _remove_stale(path)  # as start-stop-daemon --remove-pidfile would
        if found.state not in (PIDStatus.ABSENT, PIDStatus.STALE) or found.reason:
            # Starting, unknown, or gone with a leftover process holding the lock.
            result.stopped = False
            result.message = found.describe()
        return result
    pid = found.pid
    result = StopResult(pid, was_running=True)
    began = time.monotonic()
    try:
        for step_signal, wait in steps:
            try:
                _send(pid, pidfd, step_signal, group)
            except ProcessLookupError:
                pass
            result.signals.append(signal.Signals(step_signal).name)
            if _posix.pidfd_exits_within(pidfd, wait):
                result.stopped = True
                break
    finally:
        os.close(pidfd)
    result.elapsed = time.monotonic() - began
    if result.stopped:
        _remove_stale(path)
    result.message = (
        f"stopped (pid {pid}, {result.elapsed:.3f} s, {'/'.join(result.signals)})"
        if result.stopped
        else f"pid {pid} is still running after {'/'.join(result.signals)}"
    )
    return result


def _number(sig: int | str) -> int | str:
    """A signal given as ASCII digits ("15") as its number; anything else as it is."""
    return int(sig) if isinstance(sig, str) and sig.isascii() and sig.isdigit() else sig


def check_wait(seconds: object, what: str) -> float:
    """``seconds`` as a wait: a number >= 0 (``inf``: for ever), else ConfigurationError."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
        raise ConfigurationError(f"{what} must be a number of seconds >= 0, not {seconds!r}")
    return float(seconds)


def _remove_stale(path: str) -> None:
    """Remove the pidfile a stopped program left (an exec'd one cannot itself).

    Only while holding its lock, so a daemon started meanwhile keeps its file.
    """
    leftover = PIDFile(path)
    try:
        leftover.lock(0)
    except Exception:
        return  # locked again already, or not ours to touch
    leftover.release()


def reload(
    pidfile: str | os.PathLike[str],
    sig: int | str = "HUP",
    notify: bool = False,
    timeout: float = 90.0,
) -> ControlStatus:
    """Send ``sig`` (SIGHUP) to the pidfile's live holder; its status before.

    With ``notify``, listen first on the address ``daemonkit start --notify``
    gave the daemon and wait until it reports ``RELOADING=1`` and then
    ``READY=1`` (raises :class:`~daemonkit.StartupError` if it does not in
    ``timeout`` seconds or dies).
    """
    path = os.fspath(pidfile)
    found, pidfd = _open_holder(path)
    if pidfd is None or found.pid is None:
        return found
    pid = found.pid
    receiver = None
    try:
        if notify:
            from .notify import NotifySocketReceiver, pidfile_notify_name

            receiver = NotifySocketReceiver(pidfile_notify_name(path))
            receiver.watch(pid)
        signal.pidfd_send_signal(pidfd, resolve_signal(_number(sig), "signal"))
        if receiver is not None:
            _wait_reloaded(receiver, pid, timeout)
    finally:
        os.close(pidfd)
        if receiver is not None:
            receiver.close()
    return found


def _wait_reloaded(receiver: Any, pid: int, timeout: float) -> None:
    from .errors import StartupError

    deadline = time.monotonic() + check_wait(timeout, "timeout")
    reloading = False
    while True:
        messages = receiver.receive(deadline)
        if messages is None:
            raise StartupError(f"pid {pid} did not finish reloading within {timeout:g} s")
        if not messages:
            raise StartupError(f"pid {pid} exited while reloading")
        for line in "\n".join(messages).splitlines():
            reloading = reloading or line == "RELOADING=1"
            if line == "READY=1" and reloading:
                return
