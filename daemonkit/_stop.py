"""``StopRequest``: "stop was requested", as a flag threads and loops can wait on.

Set by :meth:`DaemonContext.terminate` and :meth:`DaemonContext.request_stop`
(signal handlers), read by worker threads and main loops.
"""

from __future__ import annotations

import os
import time

from . import _posix

__all__ = ["StopRequest"]


class StopRequest:
    """A flag that says "stop was requested", with a pipe to wait on.

    Setting it from a signal handler is safe (no lock is taken, unlike
    ``threading.Event``, whose lock a handler could find held by the very
    thread it interrupted). Any number of threads can :meth:`wait`;
    :meth:`fileno` is readable once it is set, for ``select`` loops and
    ``loop.add_reader``.
    """

    def __init__(self) -> None:
        self._set = False
        self._pipe: tuple[int, int] | None = None
        self._pid = 0  # the process the pipe belongs to

    def _own_pipe(self) -> tuple[int, int] | None:
        """The pipe, unless it was inherited from the process that made it.

        A child the daemon forks must neither wake the parent's waiters nor
        leave a byte in the parent's pipe that its ``wait()`` cannot drain.
        """
        pipe = self._pipe
        if pipe is not None and self._pid != os.getpid():
            return None
        return pipe

    def _adopt(self) -> None:
        """The daemon (a fork of the launcher) takes over a pipe made before open()."""
        self._pid = os.getpid()

    def is_set(self) -> bool:
        """True once a stop was requested."""
        return self._set

    def set(self) -> None:
        """Request the stop and wake every waiter."""
        self._set = True
        pipe = self._own_pipe()
        if pipe is not None:
            try:
                os.write(pipe[1], b"!")
            except OSError:  # pragma: no cover - a full pipe is readable anyway
                pass

    def fileno(self) -> int:
        """A descriptor that becomes readable when the stop is requested."""
        pipe = self._own_pipe()
        if pipe is None:
            inherited = self._pipe
            read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            if self._own_pipe() is None:
                self._pipe = pipe = (read_end, write_end)
                self._pid = os.getpid()
                for fd in inherited or ():  # a child's copies of its parent's pipe
                    os.close(fd)
            else:  # pragma: no cover - another thread made one meanwhile
                os.close(read_end)
                os.close(write_end)
                pipe = self._pipe
                assert pipe is not None
            if self._set:  # set() ran before the pipe existed
                self.set()
        return pipe[0]

    def descriptors(self) -> list[int]:
        """The pipe's descriptors, if it was made (kept open across the detach)."""
        return list(self._pipe or ())

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the stop is requested or ``timeout`` passes; returns :meth:`is_set`.

        A signal-friendly ``time.sleep``: in the main thread of a daemon,
        every signal handler still runs promptly while it waits, even one
        whose signal arrived just before the wait began (the wait also
        watches the signal wakeup descriptor, which the kernel-level handler
        writes to at once).
        """
        import select  # only where waited on: not loaded (50 kB) in every daemon

        from .signals import main_thread_wakeup

        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._set:
            watched = [self.fileno()]
            wakeup = main_thread_wakeup()
            if wakeup is not None:
                watched.append(wakeup)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            if remaining is not None:
                remaining = min(remaining, _posix.MAX_WAIT)
            readable = select.select(watched, [], [], remaining)[0]
            if watched[0] in readable and not self._set:
                _posix.drain(watched[0])  # written by someone else: not a stop
            if wakeup is not None and wakeup in readable:
                _posix.drain(wakeup)  # the handlers run at the next bytecode boundary
        return self._set

    def __bool__(self) -> bool:
        return self._set

    def __repr__(self) -> str:
        return f"<StopRequest {'set' if self._set else 'not set'}>"
