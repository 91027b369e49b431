"""systemd integration without a C dependency: sd_notify, watchdog, socket activation.

The sd_notify protocol is one datagram of ``KEY=VALUE`` lines sent to the
``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a path, or an abstract
address written with a leading ``@``), optionally carrying descriptors
(``FDSTORE=1``). Socket activation is ``$LISTEN_PID``, ``$LISTEN_FDS`` and
``$LISTEN_FDNAMES`` plus descriptors inherited from 3 up. Both are plain
environment variables and sockets, so the standard library does the job.

:func:`notify` also reaches a daemonkit launcher that is waiting for the
daemon to become ready (``STATUS=`` lines are shown by it as progress,
``READY=1`` releases it), so one call serves whoever is waiting.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Sequence

from . import _posix, readiness
from ._activation import activated_fd_numbers, listen_fd_names
from .errors import ConfigurationError, DaemonOSEnvironmentError

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "NotifyError",
    "NotifySocketReceiver",
    "Watchdog",
    "extend_timeout",
    "listen_fd_names",
    "listen_fd_numbers",
    "listen_fds",
    "listen_fds_with_names",
    "notify",
    "notify_socket_address",
    "pidfile_notify_name",
    "reloading",
    "start_watchdog",
    "status",
    "stopping",
    "store_fds",
    "watchdog_interval",
    "watchdog_loop",
    "watchdog_ping",
]

LISTEN_FDS_START = 3


class NotifyError(DaemonOSEnvironmentError):
    """The service manager's notification socket could not be reached."""


def notify_socket_address() -> str | bytes | None:
    """The address in ``$NOTIFY_SOCKET`` (abstract ones as bytes), or None if unset.

    Raises :class:`NotifyError` for a form this client does not speak (a
    relative path, systemd's ``vsock:``), rather than dropping the message.
    """
    value = os.environ.get("NOTIFY_SOCKET", "")
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    import errno

    raise NotifyError(
        errno.EAFNOSUPPORT,
        f"NOTIFY_SOCKET={value!r}: only absolute AF_UNIX paths and @abstract names are supported",
    )


def _field_lines(lines: Sequence[str], fields: dict[str, Any]) -> list[str]:
    out = []
    for line in lines:
        key, sep, _ = line.partition("=")
        if not sep or not key or "\n" in line:
            raise ValueError(f"notify: {line!r} is not one KEY=VALUE line")
        out.append(line)
    for key, value in fields.items():
        if isinstance(value, bool):
            value = int(value)
        text = str(value)
        if "\n" in text:
            raise ValueError(f"notify: the value of {key} must be one line")
        out.append(f"{key.upper()}={text}")
    return out


def _send_to_manager(address: str | bytes, payload: bytes, fds: Sequence[int]) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            if fds:
                socket.send_fds(sock, [payload], list(fds))
            else:
                sock.sendall(payload)
        except OSError as exc:
            shown = os.environ.get("NOTIFY_SOCKET", "")
            raise NotifyError(
                exc.errno, f"cannot notify the service manager at {shown!r}: {exc.strerror}"
            ) from exc


def notify(
    *lines: str,
    fds: Sequence[int] = (),
    unset_environment: bool = False,
    **fields: Any,
) -> bool:
    """Send sd_notify fields to the service manager and/or the waiting launcher.

    ``notify("READY=1", STATUS="serving")`` and ``notify(ready=1)`` are the
    same. ``fds`` travel with the message (``FDSTORE=1``). Returns True if
    anyone received it; with nobody listening it is a cheap no-op. Raises
    :class:`NotifyError` if ``$NOTIFY_SOCKET`` is set but unreachable.
    """
    items = _field_lines(lines, fields)
    if not items:
        return False
    told = False
    address = notify_socket_address()
    if address is not None:  # first: if it fails, the launcher must not hear READY
        _send_to_manager(address, "\n".join(items).encode() + b"\n", fds)
        told = True
    told = _tell_launcher(items) or told
    if unset_environment:
        os.environ.pop("NOTIFY_SOCKET", None)
    return told


def _tell_launcher(items: list[str]) -> bool:
    if not readiness.pending():
        return False
    ready = "READY=1" in items
    progress = [item for item in items if item.startswith(("STATUS=", "ERRNO="))]
    if ready:
        status_text = next((i[len("STATUS=") :] for i in progress if i.startswith("STATUS=")), None)
        readiness.ready_launcher(status_text)
        return True
    return bool(progress) and readiness.send("\n".join(progress))


def status(text: str) -> bool:
    """``STATUS=text``: a one-line description of what the daemon is doing."""
    return notify(STATUS=text.replace("\n", " "))


def reloading() -> bool:
    """``RELOADING=1`` with ``MONOTONIC_USEC`` (as ``Type=notify-reload`` wants)."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping() -> bool:
    """``STOPPING=1``: the daemon is shutting down."""
    return notify("STOPPING=1")


def extend_timeout(seconds: float) -> bool:
    """``EXTEND_TIMEOUT_USEC``: ask for more time to start, reload or stop."""
    return notify(EXTEND_TIMEOUT_USEC=int(seconds * 1_000_000))


def store_fds(fds: Sequence[int], name: str | None = None) -> bool:
    """``FDSTORE=1``: keep ``fds`` in the service manager across restarts."""
    extra = [f"FDNAME={name}"] if name else []
    return notify("FDSTORE=1", *extra, fds=fds)


# -- the listening side ------------------------------------------------------------


def pidfile_notify_name(pidfile: str) -> str:
    """The abstract socket name ``daemonkit start --notify`` gives a daemon.

    Derived from the pidfile's path, so that ``daemonkit reload --notify``
    can listen on the same address later and hear ``RELOADING=1``/``READY=1``.
    """
    import hashlib

    digest = hashlib.sha256(os.path.abspath(pidfile).encode()).hexdigest()[:24]
    return f"daemonkit/notify/{digest}"


class NotifySocketReceiver:
    """The service manager's side of sd_notify, for a launcher.

    Binds an abstract ``AF_UNIX`` datagram socket; put :attr:`address` in a
    program's ``$NOTIFY_SOCKET`` and :meth:`receive` returns what it sends.
    It fits :func:`daemonkit.readiness.wait_until_ready`, so a launcher can
    wait for any program that speaks sd_notify, not only Python ones.
    ``senders`` records the pid of each message's sender (``SO_PASSCRED``).
    """

    def __init__(self, name: str | None = None) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        name = name or f"daemonkit/notify/{os.getpid()}/{os.urandom(6).hex()}"
        try:
            self._sock.bind(b"\0" + name.encode())
        except OSError as exc:
            self._sock.close()
            raise NotifyError(
                exc.errno, f"cannot listen for notifications on @{name}: {exc.strerror}"
            ) from exc
        self.address = "@" + name
        self.senders: list[int] = []
        self._pidfd: int | None = None

    def watch(self, pid: int) -> None:
        """Also wake :meth:`receive` when process ``pid`` exits (it returns [])."""
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = -1  # already gone

    def environment(self) -> dict[str, str]:
        """The variables to give the program: ``{"NOTIFY_SOCKET": address}``."""
        return {"NOTIFY_SOCKET": self.address}

    def fileno(self) -> int:
        return self._sock.fileno()

    def receive(self, deadline: float) -> list[str] | None:
        """The next message(s); None when ``deadline`` (monotonic) passes."""
        import select

        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        if self._pidfd == -1:
            return []
        if self._pidfd is not None:
            poller.register(self._pidfd, select.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready = [fd for fd, _ in poller.poll(_posix.wait_ms(remaining))]
            if not ready:
                continue
            if self._sock.fileno() not in ready:  # the watched process exited
                return []
            sender, text = self._receive_one()
            if sender is not None:
                self.senders.append(sender)
            return [text]

    def receive_nowait(self) -> list[tuple[int | None, str]]:
        """Every message queued now, each with its sender's pid (None if unknown)."""
        found: list[tuple[int | None, str]] = []
        while True:
            try:
                found.append(self._receive_one(socket.MSG_DONTWAIT))
            except (BlockingIOError, InterruptedError):
                return found

    def _receive_one(self, flags: int = 0) -> tuple[int | None, str]:
        """One datagram and its sender; descriptors sent along are closed."""
        creds_size = socket.CMSG_SPACE(12)  # struct ucred: pid, uid, gid
        data, ancillary, _, _ = self._sock.recvmsg(
            65536, creds_size + socket.CMSG_SPACE(253 * 4), flags
        )
        sender = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                sender = int.from_bytes(payload[:4], sys.byteorder)
            elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                for index in range(0, len(payload) - len(payload) % 4, 4):
                    os.close(int.from_bytes(payload[index : index + 4], sys.byteorder))
        return sender, data.decode("utf-8", "replace")

    def close(self) -> None:
        self._sock.close()
        if self._pidfd is not None and self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = None

    def __enter__(self) -> NotifySocketReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- watchdog ---------------------------------------------------------------------


def watchdog_interval() -> float | None:
    """Seconds within which systemd wants a ``WATCHDOG=1``, or None if not asked.

    Honours ``$WATCHDOG_PID``: the request is ignored when it names another
    process (e.g. the variables leaked into a child).
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000


def watchdog_ping() -> bool:
    """``WATCHDOG=1``: tell systemd the daemon is alive."""
    return notify("WATCHDOG=1")


class Watchdog:
    """Pings ``WATCHDOG=1`` at half the interval from a thread, until stopped.

    Use as a context manager around the main loop (the thread stops when the
    block is left, so a hung or exiting daemon stops pinging), or call
    :meth:`start` and :meth:`stop`.
    """

    def __init__(self, interval: float | None = None) -> None:
        self.interval = watchdog_interval() if interval is None else interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: NotifyError | None = None  # the last ping's failure, if any

    def start(self) -> Watchdog:
        """Start pinging (nothing happens if no watchdog was requested)."""
        if self.interval and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="daemonkit-watchdog", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop pinging and wait for the thread to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        assert self.interval
        while True:
            try:
                watchdog_ping()
                self.error = None
            except NotifyError as exc:  # keep trying: the manager may come back
                self.error = exc
            if self._stop.wait(self.interval / 2):
                return

    def __enter__(self) -> Watchdog:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_watchdog(interval: float | None = None) -> Watchdog:
    """Start a :class:`Watchdog` thread and return it."""
    return Watchdog(interval).start()


async def watchdog_loop(interval: float | None = None) -> None:
    """Ping at half the interval forever; run it as an asyncio task and cancel it."""
    import asyncio

    period = watchdog_interval() if interval is None else interval
    if not period:
        return
    while True:
        watchdog_ping()
        await asyncio.sleep(period / 2)


# -- socket activation --------------------------------------------------------------


def _unset_activation_environment() -> None:
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)


def _claim(unset_environment: bool) -> list[int]:
    fds = activated_fd_numbers()
    for fd in fds:
        os.set_inheritable(fd, False)  # close-on-exec, like sd_listen_fds
    if unset_environment:
        _unset_activation_environment()
    return fds


def listen_fd_numbers(unset_environment: bool = True) -> list[int]:
    """The activated descriptors (3, 4, ...) as ints, marked close-on-exec."""
    return _claim(unset_environment)


def listen_fds(unset_environment: bool = True) -> list[socket.socket]:
    """The activated sockets, of the family and type systemd created.

    Empty when this process was not socket-activated (or ``$LISTEN_PID``
    names another process). The variables are removed by default so that
    children do not believe they were activated too. Call it inside the
    ``DaemonContext`` (which keeps activated descriptors open by itself), or
    pass sockets taken before it in ``files_preserve``. Each call makes new
    socket objects for the same descriptors: call it once.
    """
    fds = activated_fd_numbers()
    for fd in fds:  # all checked before any is wrapped: a failure changes nothing
        try:
            is_socket = stat.S_ISSOCK(os.fstat(fd).st_mode)
        except OSError:
            is_socket = False
        if not is_socket:
            raise ConfigurationError(
                f"activated descriptor {fd} is not a socket (a FIFO or file from the "
                "socket unit?); use listen_fd_numbers() for those"
            )
    return [socket.socket(fileno=fd) for fd in _claim(unset_environment)]


def listen_fds_with_names(unset_environment: bool = True) -> list[tuple[str, socket.socket]]:
    """Like :func:`listen_fds`, with each socket's ``FileDescriptorName=``."""
    names = listen_fd_names()
    return list(zip(names, listen_fds(unset_environment), strict=True))
