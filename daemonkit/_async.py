"""asyncio main loops in a daemon: the signal map, bridged to the event loop.

``daemonkit.run_async(main())`` is ``asyncio.run`` for a daemon. While the
loop runs, every signal the daemon handles in Python is handed to the loop
instead, so its handler runs as a loop callback
(never inside another, free to touch loop objects; a handler may also be a
coroutine function, whose coroutine is run as a task). A handler that asks
the process to exit (``terminate``, the default for SIGTERM, raises
``SystemExit``) cancels the main task instead: the coroutine's ``finally``
blocks and ``async with`` exits run, the loop is shut down cleanly, and only
then is the ``SystemExit`` raised, so the daemon leaves its context and exits
with the status asked for.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Coroutine

from ._posix import block_signals, drain, set_signal_mask, set_wakeup_fd
from .signals import Dispatched, active_dispatcher, main_thread_wakeup

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from typing import Any, TypeVar

    from .signals import Callback

    T = TypeVar("T")

__all__ = ["run_async"]


class _Bridge:
    """Routes the daemon's signals to the running loop while it runs.

    Handing the signals over (and back) happens with them blocked, so one
    that arrives meanwhile is delivered afterwards to whichever handler is
    then in place, never to the default action in between.

    The handlers are Python-level ones that schedule :meth:`fire` on the
    loop, at most once per signal until it has run. ``loop.add_signal_handler``
    is not used: it learns which signal came from bytes written to a socket
    pair, which a burst of signals fills (signals are then lost, a warning is
    printed for each, and a nested C handler can deadlock on the lock of
    the one it interrupted). Python's own per-signal flags coalesce instead.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, main: asyncio.Task[Any]) -> None:
        self.loop = loop
        self.main = main
        self.exit: SystemExit | None = None
        dispatcher = active_dispatcher()
        self.handlers: dict[int, Callback] = {}
        for signum in dispatcher.handlers if dispatcher else ():
            # The handler in place now: the program may have replaced the map's.
            current = signal.getsignal(signum)
            if isinstance(current, Dispatched):
                current = current.__wrapped__
            if callable(current):
                self.handlers[signum] = current
        if not self.handlers:  # outside a DaemonContext: SIGTERM still ends it cleanly
            self.handlers[signal.SIGTERM] = _exit_cleanly
        self.before: dict[int, Any] = {}
        self.pending: set[int] = set()
        self.wakeup = -1  # read end of the pipe the C-level handler writes to
        self.own_pipe: tuple[int, int] | None = None
        self.wakeup_before = -1

    def install(self) -> None:
        mask = block_signals(self.handlers)
        try:
            for signum in self.handlers:
                self.before[signum] = signal.getsignal(signum)
                signal.signal(signum, self.noted)
            self._watch_wakeup()
        finally:
            set_signal_mask(mask)

    def _watch_wakeup(self) -> None:
        """Wake the loop when a signal arrives, even one caught on another thread.

        The Python-level handlers run only in the main thread, between
        bytecodes: a loop asleep in ``epoll`` must be woken for them.
        """
        wakeup = main_thread_wakeup()  # the daemon's own wakeup pipe, if any
        if wakeup is None:
            self.own_pipe = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            self.wakeup_before = set_wakeup_fd(self.own_pipe[1])
            wakeup = self.own_pipe[0]
        self.wakeup = wakeup
        self.loop.add_reader(wakeup, drain, wakeup)

    def noted(self, signum: int, frame: object) -> None:
        """The Python-level handler: schedule the signal's handler on the loop."""
        if signum in self.pending or self.loop.is_closed():
            return
        self.pending.add(signum)
        self.loop.call_soon_threadsafe(self.fire, signum)

    def hold(self) -> set[int]:
        """Block the bridged signals while the loop shuts down; returns the old mask."""
        return block_signals(self.handlers)

    def restore(self) -> None:
        """Put back the handlers and the wakeup descriptor there were before."""
        for signum, before in self.before.items():
            signal.signal(signum, signal.SIG_DFL if before is None else before)
        if self.wakeup >= 0:
            self.loop.remove_reader(self.wakeup)
        if self.own_pipe is not None:
            set_wakeup_fd(self.wakeup_before)
            for fd in self.own_pipe:
                os.close(fd)
            self.own_pipe = None

    def fire(self, signum: int) -> None:
        self.pending.discard(signum)
        try:
            result = self.handlers[signum](signum, None)
        except SystemExit as exc:
            if self.exit is None:
                self.exit = exc
            self.main.cancel()
            return
        if asyncio.iscoroutine(result):
            self.loop.create_task(result)


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def run_async(main: Coroutine[Any, Any, T], *, debug: bool | None = None) -> T:
    """Run the coroutine ``main`` on a new event loop, with the daemon's signals.

    Use it inside the ``with DaemonContext(...)`` block (the handlers come
    from its signal map; outside one, SIGTERM alone is handled, the same
    way). SIGTERM cancels ``main`` and, once it has finished and the loop
    is closed, raises ``SystemExit(0)``. ``daemonkit.ready()`` can be
    called from the coroutine (it does not block). Must be called from the
    main thread, as ``asyncio.run``.
    """
    if not asyncio.iscoroutine(main):
        raise TypeError(f"run_async() needs a coroutine, not {main!r} (call the function)")
    loop = asyncio.new_event_loop()
    bridge: _Bridge | None = None
    try:
        asyncio.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        task = loop.create_task(main)
        bridge = _Bridge(loop, task)
        bridge.install()
        try:
            result = loop.run_until_complete(task)
        except asyncio.CancelledError:
            if bridge.exit is None:
                raise
    finally:
        # Signals wait (blocked) from here until the old handlers are back:
        # one arriving meanwhile is handled by them, never by SIG_DFL.
        mask = bridge.hold() if bridge is not None else None
        try:
            try:
                _finish(loop)  # also runs what the loop still had queued from a signal
            finally:
                if bridge is not None:
                    bridge.restore()
                asyncio.set_event_loop(None)
                loop.close()
        finally:
            if mask is not None:
                set_signal_mask(mask)
    if bridge.exit is not None:
        raise bridge.exit
    return result


def _finish(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left, as ``asyncio.run`` does, then shut down generators."""
    left = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in left:
        task.cancel()
    if left:
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
    loop.run_until_complete(asyncio.sleep(0))  # a signal already noted is dispatched
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(loop.shutdown_default_executor())
