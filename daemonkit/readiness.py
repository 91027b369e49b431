"""The launcher <-> daemon handshake.

The launching process does not exit when it forks: it waits on a pipe until
the daemon says it is ready, then exits 0; if the daemon reports an error,
exits, or is killed first, the launcher prints what happened and exits
non-zero. It never hangs: a daemon that dies closes its end of the pipe, and
a daemon that stays silent past the timeout is stopped.

Messages use the vocabulary of systemd's sd_notify protocol (``READY=1``,
``STATUS=...``, ``MAINPID=...``) so the same calls serve both listeners;
daemonkit's own error report travels as ``X_DAEMONKIT_ERROR=<text>``. On the
pipe each message is framed by a 4-byte big-endian length.
"""

from __future__ import annotations

import os
import select
import sys
import time

from . import _posix
from ._lazy import LazyModule

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from typing import Protocol

    from . import errors

    class Receiver(Protocol):
        """Where the launcher reads the daemon's sd_notify-style messages from."""

        def fileno(self) -> int: ...

        def receive(self, deadline: float) -> list[str] | None: ...
else:
    errors = LazyModule("daemonkit.errors")  # loaded only if something fails


DEFAULT_READY_TIMEOUT = 90.0  # seconds; systemd's default TimeoutStartSec
STOP_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for a daemon that timed out
# After a successful exec, a program that dies within this many seconds is
# reported as a failed start (a missing config file, a bad option), not "up".
EXEC_GRACE = 0.2
EOF_GRACE = 2.0  # seconds a daemon whose channel closed has to finish dying
_ERROR_KEY = "X_DAEMONKIT_ERROR="
_READY_FRAME = b"\x00\x00\x00\x07READY=1"
_MAX_MESSAGE = 1 << 20


class _DaemonSide:
    """The daemon's end of the channel (at most one per process)."""

    fd: int | None = None
    owner: int = 0


def _forget_in_child() -> None:
    # A process the daemon forks before it is ready must not keep the
    # launcher waiting, nor be able to speak for the daemon.
    if _DaemonSide.fd is not None and os.getpid() != _DaemonSide.owner:
        try:
            os.close(_DaemonSide.fd)
        except OSError:
            pass
        _DaemonSide.fd = None


# Registered once, at import, in the launcher: not in the daemon's setup.
os.register_at_fork(after_in_child=_forget_in_child)


def adopt(fd: int) -> None:
    """Make ``fd`` this process's channel; children forked later drop it."""
    _DaemonSide.fd = fd
    _DaemonSide.owner = os.getpid()


def channel_fd() -> int | None:
    """The daemon's open channel descriptor, if a launcher is waiting."""
    if _DaemonSide.fd is not None and _DaemonSide.owner == os.getpid():
        return _DaemonSide.fd
    return None


def frames(*messages: str) -> bytes:
    """Messages framed for the channel: a 4-byte big-endian length each."""
    data = b""
    for message in messages:
        payload = message.encode("utf-8", "backslashreplace")[:_MAX_MESSAGE]
        data += len(payload).to_bytes(4, "big") + payload
    return data


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` (a pipe may take it in parts)."""
    while data:
        data = data[os.write(fd, data) :]


def send(*messages: str) -> bool:
    """Send messages to the waiting launcher in one write; False if none waits.

    Every report names the daemon's pid (``MAINPID=``) in the same write, so
    the launcher wakes once per report, not once more in the middle of the
    daemon's setup.
    """
    fd = channel_fd()
    if fd is None:
        return False
    try:
        write_all(fd, frames(f"MAINPID={os.getpid()}", *messages))
    except OSError:  # the launcher is gone (e.g. killed): nobody to tell
        close_channel()
        return False
    return True


def close_channel() -> None:
    """Close the daemon's end; the launcher sees end-of-file."""
    fd = channel_fd()
    _DaemonSide.fd = None
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def pending() -> bool:
    """True while a launcher is waiting for this process to become ready."""
    return channel_fd() is not None


def entered() -> None:
    """:meth:`DaemonContext.open`'s own ``ready()``: the same, in fewer steps.

    Called in a newly forked daemon, where each further function run costs
    copy-on-write faults: the common case (a daemonkit launcher waits, no
    ``$NOTIFY_SOCKET``) is one write and one close.
    """
    fd = _DaemonSide.fd
    if fd is None or "NOTIFY_SOCKET" in os.environ or _DaemonSide.owner != os.getpid():
        ready()
        return
    pid = str(os.getpid()).encode()
    message = (len(pid) + 8).to_bytes(4, "big") + b"MAINPID=" + pid + _READY_FRAME
    _DaemonSide.fd = None
    try:
        os.write(fd, message)  # a pipe takes this much (< PIPE_BUF) in one write
    except OSError:
        pass  # the launcher is gone: nobody to tell
    finally:
        os.close(fd)


def ready(status: str | None = None) -> None:
    """Tell whoever waits that the daemon is ready to serve.

    A waiting daemonkit launcher exits 0; a systemd service manager
    (``$NOTIFY_SOCKET``, ``Type=notify``) gets ``READY=1``. With nobody
    waiting this is a cheap no-op. ``status`` is a one-line description sent
    along (``STATUS=``).
    """
    if os.environ.get("NOTIFY_SOCKET"):
        from .notify import notify

        notify("READY=1", *([f"STATUS={status.replace(chr(10), ' ')}"] if status else []))
        return
    ready_launcher(status)


def ready_launcher(status: str | None = None) -> None:
    """Release the waiting launcher (if any): ``READY=1`` on the channel."""
    if channel_fd() is None:
        return
    message = "READY=1"
    if status:
        message += "\nSTATUS=" + status.replace("\n", " ")
    send(message)
    close_channel()


def report_text(text: str) -> None:
    """Tell the waiting launcher why the daemon will not be ready, and hang up."""
    send(_ERROR_KEY + text)
    close_channel()


def report_failure(exc: BaseException, context: str = "") -> None:
    """Send the exception (type, message, traceback) to the launcher and hang up."""
    if channel_fd() is None:
        return
    try:
        import traceback

        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:  # e.g. a module it needs is out of reach after chroot
        text = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}\n"
    report_text(f"{context}\n{text}" if context else text)


# -- the launcher's side -------------------------------------------------------


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
            if not poller.poll(remaining * 1000):
                continue
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return messages
            self._buffer += chunk


def __getattr__(name: str) -> object:
    # ``Receiver`` is built on first use: a Protocol needs ``typing``, which
    # the daemon should not pay for at import time.
    if name == "Receiver":
        protocol = _receiver_protocol()
        globals()["Receiver"] = protocol
        return protocol
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _receiver_protocol() -> type:
    from typing import Protocol

    class Receiver(Protocol):
        """Where the launcher reads the daemon's sd_notify-style messages from."""

        def fileno(self) -> int: ...

        def receive(self, deadline: float) -> list[str] | None: ...

    Receiver.__module__ = __name__
    return Receiver


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

    def pid(self) -> int | None:
        """The daemon's pid, or None if the intermediate process never forked it."""
        self._read(block=False)
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
            if message.startswith(_ERROR_KEY):
                raise errors.StartupError(
                    f"the daemon{_pid_text(outcome.pid)} failed before it was ready:",
                    details=message[len(_ERROR_KEY) :],
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
            gone = select.poll()
            gone.register(pidfd, select.POLLIN)
            if gone.poll(grace * 1000):
                return
    finally:
        os.close(pidfd)
