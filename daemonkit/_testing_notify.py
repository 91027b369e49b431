"""The service manager's end of sd_notify, for tests: :class:`NotifyRecorder`.

Part of the pytest plugin (see :mod:`daemonkit.testing`, which re-exports
:class:`NotifyRecorder` and gives it to tests as the ``fake_notify_socket``
fixture). :class:`daemonkit.testing.DaemonHandle` waits on one too, for the
messages of a daemon started with ``notify=True``.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from .notify import NotifySocketReceiver


class WatchedProcessExited(Exception):
    """The watched process exited while :meth:`NotifyRecorder._wait` waited.

    Internal: :class:`~daemonkit.testing.DaemonHandle` turns it into a
    :class:`~daemonkit.testing.DaemonExitedError` that names the daemon.
    """


def matches(line: str, wanted: str) -> bool:
    """``READY=1`` matches itself; a bare key such as ``STATUS=`` any value of it."""
    return line == wanted or (wanted.endswith("=") and line.startswith(wanted))


class NotifyRecorder:
    """The service manager's end of sd_notify, for tests.

    Binds an abstract ``AF_UNIX`` datagram socket (through
    :class:`daemonkit.notify.NotifySocketReceiver`); give :attr:`address`
    to a program as ``$NOTIFY_SOCKET`` and every line it sends is recorded,
    in order, with the pid of its sender (``SO_PASSCRED``). Nothing is read
    in the background: messages are collected whenever they are asked for.
    """

    def __init__(self, name: str | None = None) -> None:
        from .notify import NotifySocketReceiver

        self._receiver: NotifySocketReceiver = NotifySocketReceiver(name)
        self.address: str = self._receiver.address  #: ``@name``, as ``$NOTIFY_SOCKET`` takes it
        self._lines: list[str] = []
        self._senders: list[int | None] = []

    def environment(self) -> dict[str, str]:
        """``{"NOTIFY_SOCKET": address}``, to merge into a program's environment."""
        return {"NOTIFY_SOCKET": self.address}

    def messages(self) -> list[str]:
        """Every line received so far (``READY=1``, ``STATUS=...``), oldest first."""
        self._drain()
        return list(self._lines)

    @property
    def senders(self) -> list[int | None]:
        """The pid that sent each line of :meth:`messages` (same index)."""
        self._drain()
        return list(self._senders)

    def wait_for(self, line: str, timeout: float = 10.0, *, since: int = 0) -> str:
        """Wait until ``line`` has been received; return it.

        ``line`` is a whole line (``"READY=1"``), or a key ending in ``=``
        (``"STATUS="``) that any value of it matches. Only lines from index
        ``since`` of :meth:`messages` on count: take ``len(messages())``
        before you act to wait for a *new* ``READY=1``. Raises
        ``TimeoutError`` (listing what did arrive) after ``timeout`` seconds.
        """
        return self._wait(line, timeout, since, None)

    def _wait(self, line: str, timeout: float, since: int, pidfd: int | None) -> str:
        """:meth:`wait_for`; raises :class:`WatchedProcessExited` if ``pidfd``'s
        process ends first."""
        import select

        from ._posix import wait_ms

        poller = select.poll()
        poller.register(self._receiver.fileno(), select.POLLIN)
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while True:
            self._drain()
            for found in self._lines[since:]:
                if matches(found, line):
                    return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"no {line!r} on {self.address} within {timeout:g} s; "
                    f"received: {self._lines[since:]!r}"
                )
            events = dict(poller.poll(wait_ms(remaining)))
            if pidfd is not None and pidfd in events and self._receiver.fileno() not in events:
                self._drain()  # what it said before it died is queued already
                for found in self._lines[since:]:
                    if matches(found, line):
                        return found
                raise WatchedProcessExited(line)

    def _drain(self) -> None:
        for sender, text in self._receiver.receive_nowait():
            for item in text.splitlines():
                self._lines.append(item)
                self._senders.append(sender)

    def close(self) -> None:
        """Stop listening (the address is free again)."""
        self._receiver.close()

    def __repr__(self) -> str:
        return f"<NotifyRecorder {self.address} ({len(self._lines)} lines)>"
