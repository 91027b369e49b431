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

from ._launcher import (  # the launcher's side, re-exported: the public API is here
    DEFAULT_READY_TIMEOUT,
    EOF_GRACE,
    ERROR_KEY,
    EXEC_GRACE,
    STOP_GRACE,
    MiddleReport,
    Outcome,
    PipeReceiver,
    say,
    wait_until_ready,
)

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from typing import Protocol

    class Receiver(Protocol):
        """Where the launcher reads the daemon's sd_notify-style messages from."""

        def fileno(self) -> int: ...

        def receive(self, deadline: float) -> list[str] | None: ...


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
    message = frames(f"MAINPID={os.getpid()}", "READY=1")
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
    send(ERROR_KEY + text)
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


__all__ = [
    "DEFAULT_READY_TIMEOUT",
    "EOF_GRACE",
    "EXEC_GRACE",
    "STOP_GRACE",
    "MiddleReport",
    "Outcome",
    "PipeReceiver",
    "adopt",
    "channel_fd",
    "close_channel",
    "entered",
    "frames",
    "pending",
    "ready",
    "ready_launcher",
    "report_failure",
    "report_text",
    "say",
    "send",
    "wait_until_ready",
]
