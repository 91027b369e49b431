"""Signal maps: resolve them where errors can be seen, run them safely in the daemon.

A ``signal_map`` (PEP 3143) maps signals to handlers. Keys may be
``signal.Signals``, ints or names (``"SIGHUP"``, ``"HUP"``, any case); values
may be callables, ``None`` (ignore), ``signal.SIG_DFL``/``signal.SIG_IGN`` or
the name of a method of the context (``"terminate"``). Resolution happens
when the map is given (and again in the launching process before the fork),
so a typo is a ``ValueError`` the user sees, not a silent failure in the
daemon.

In the daemon, Python-level handlers are run by one :class:`Dispatcher`:
a handler never runs inside another (a signal that arrives meanwhile is
queued and handled right after), and signals that arrive during the
daemon's setup are held back (blocked) until the handlers are installed,
then delivered, not lost. (:class:`~daemonkit.StopRequest`, in ``_stop``,
is the flag with a self-pipe that threads and event loops wait on.)
"""

from __future__ import annotations

import _thread  # built in: threading need not be loaded (nor be reachable in a chroot)
import os
from _collections_abc import Mapping  # always loaded (by os); collections is not

from ._lazy import errors
from ._posix import (
    SIG_DFL,
    SIG_IGN,
    SIGNAL_NAMES,
    SIGNAL_NUMBERS,
    install_handlers,
    raise_signal,
    set_wakeup_fd,
    signal_name,
)

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType
    from typing import Any, TypeAlias

    Handler: TypeAlias = Callable[[int, FrameType | None], Any] | int | None

    ResolvedMap = dict[int, Handler]

    Callback: TypeAlias = Callable[[int, FrameType | None], Any]


UNCATCHABLE = frozenset({SIGNAL_NUMBERS["SIGKILL"], SIGNAL_NUMBERS["SIGSTOP"]})


def default_signal_map() -> dict[Any, Any]:
    """PEP 3143's default: ignore terminal job control, SIGTERM terminates."""
    mapping: dict[Any, Any] = {
        SIGNAL_NUMBERS[name]: None for name in ("SIGTSTP", "SIGTTIN", "SIGTTOU")
    }
    mapping[SIGNAL_NUMBERS["SIGTERM"]] = "terminate"
    return mapping


def resolve_signal(key: object, label: str = "signal_map") -> int:
    """The number of a signal given as a ``signal.Signals``, an int or a name (``"hup"``).

    ``label`` names the setting in error messages.
    """
    if isinstance(key, int) and not isinstance(key, bool):
        if key not in SIGNAL_NAMES:
            raise errors.SignalMapError(f"{label}: {key} is not a signal number")
        sig = int(key)
    elif isinstance(key, str):
        name = key.strip().upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        if name not in SIGNAL_NUMBERS:
            raise errors.SignalMapError(
                f"{label}: unknown signal name {key!r} (use names like 'SIGHUP' or 'HUP')"
            )
        sig = SIGNAL_NUMBERS[name]
    else:
        raise errors.SignalMapError(
            f"{label}: key {key!r} is not a signal (give a signal.Signals, an int or a name)"
        )
    return sig


def resolve_catchable(key: object, label: str) -> int:
    """Like :func:`resolve_signal`, refusing SIGKILL and SIGSTOP."""
    sig = resolve_signal(key, label)
    if sig in UNCATCHABLE:
        raise errors.SignalMapError(f"{label}: {signal_name(sig)} cannot be caught or ignored")
    return sig


def resolve_signal_map(signal_map: Mapping[Any, Any] | None, context: object) -> ResolvedMap:
    """Validate ``signal_map`` and turn every entry into an installable handler."""
    resolved: ResolvedMap = {}
    if signal_map is None:
        return resolved
    if not isinstance(signal_map, Mapping):
        raise errors.SignalMapError(
            f"signal_map must be a mapping, not {type(signal_map).__name__}"
        )
    for key, value in signal_map.items():
        sig = resolve_catchable(key, "signal_map")
        resolved[sig] = resolve_handler(sig, value, context)
    return resolved


def resolve_handler(sig: int, value: object, context: object) -> Handler:
    """An installable handler for one map value (see the module docstring)."""
    if value is None:
        return SIG_IGN
    if isinstance(value, str):
        method: Handler = getattr(context, value, None)
        if not callable(method):
            raise errors.SignalMapError(
                f"signal_map[{signal_name(sig)}]: {value!r} is not a method of "
                f"{type(context).__name__}"
            )
        return method
    if isinstance(value, int) and not isinstance(value, bool):
        if value not in (SIG_DFL, SIG_IGN):
            raise errors.SignalMapError(
                f"signal_map[{signal_name(sig)}]: {value} is neither SIG_DFL nor SIG_IGN"
            )
        return int(value)
    if callable(value):
        return value
    raise errors.SignalMapError(
        f"signal_map[{signal_name(sig)}]: {value!r} is not a handler "
        "(give a callable, None, signal.SIG_IGN, signal.SIG_DFL or a method name)"
    )


class ReopenThen:
    """The handler of the reopen signal: reopen log files, then the map's handler."""

    def __init__(self, reopen: Callable[[], object], then: Callback | None) -> None:
        self.reopen = reopen
        self.then = then

    def __call__(self, signum: int, frame: FrameType | None) -> Any:
        self.reopen()
        if self.then is not None:
            return self.then(signum, frame)
        return None

    def __eq__(self, other: object) -> bool:
        # ``signal.getsignal(SIGHUP) == on_hup`` holds, as for other signals.
        return other is self or (self.then is not None and bool(self.then == other))

    def __hash__(self) -> int:
        return hash(self.then) if self.then is not None else id(self)


def with_reopen(
    resolved: ResolvedMap, reopen_signal: int | None, reopen: Callable[[], object]
) -> ResolvedMap:
    """``resolved`` with log files reopened on ``reopen_signal`` first.

    The map's own handler for that signal still runs after the reopening
    when it is a callable; an explicit ``SIG_DFL`` in the map wins (the
    signal then does what it does by default, no reopening).
    """
    if reopen_signal is None:
        return resolved
    current = resolved.get(reopen_signal)
    if current == SIG_DFL and reopen_signal in resolved:
        return resolved
    then = current if callable(current) else None
    return {**resolved, reopen_signal: ReopenThen(reopen, then)}


class Dispatcher:
    """Runs the daemon's Python signal handlers, one at a time.

    Each signal mapped to a callable gets a :class:`Dispatched` as its
    Python-level handler. A signal that arrives while a handler runs (Python
    would run the second handler inside the first) is queued and its
    handler runs right after; one that arrives again before its handler ran
    is handled once, as the kernel would coalesce it too.
    """

    def __init__(self, handlers: dict[int, Callback]) -> None:
        self.handlers = handlers
        self._queue: list[int] = []  # a few signals at most
        self._running = False
        self.wakeup: tuple[int, int] | None = None
        self.main_thread = _thread.get_ident()

    def dispatch(self, signum: int, frame: FrameType | None) -> None:
        if signum not in self._queue:
            self._queue.append(signum)
        if self._running:
            return  # the running handler's loop picks it up
        while self._queue:
            self._running = True
            try:
                while self._queue:
                    queued = self._queue.pop(0)
                    handler = self.handlers.get(queued)
                    if handler is not None:
                        _check_result(handler, handler(queued, frame))
            except BaseException:
                # The handler raised (SystemExit, say): the signals still
                # queued are handled, not forgotten. Raising the first one
                # again runs a fresh dispatch at once, which takes the queue.
                self._running = False
                if self._queue:
                    raise_signal(self._queue[0])
                raise
            finally:
                self._running = False

    def wakeup_fd(self) -> int | None:
        """The read end of a pipe the kernel-level signal handler writes to.

        Made on first use (in the main thread), and pointed at again each
        time, since an event loop run meanwhile may have taken the wakeup
        descriptor over; None if the program set a wakeup descriptor of its
        own, which is left alone.
        """
        if not self.handlers:
            return None
        if self.wakeup is None:
            self.wakeup = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        before = set_wakeup_fd(self.wakeup[1])
        if before not in (-1, self.wakeup[1]):
            set_wakeup_fd(before)
            return None
        return self.wakeup[0]


class Dispatched:
    """The installed handler of one signal: runs ``handler`` through the dispatcher.

    It compares equal to ``handler`` (and forwards attribute lookups to it),
    so that ``signal.getsignal(SIGTERM) == context.terminate`` holds as it
    does with python-daemon; ``__wrapped__`` is the handler itself.
    """

    def __init__(self, dispatcher: Dispatcher, handler: Callback) -> None:
        self.dispatcher = dispatcher
        self.__wrapped__ = handler

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.dispatcher.dispatch(signum, frame)

    def __eq__(self, other: object) -> bool:
        return other is self or bool(self.__wrapped__ == other)

    def __hash__(self) -> int:
        return hash(self.__wrapped__)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__wrapped__, name)

    def __repr__(self) -> str:
        return f"<daemonkit signal handler {self.__wrapped__!r}>"


def _check_result(handler: Callback, result: object) -> None:
    """A coroutine handler outside an event loop would silently never run: say so."""
    close = getattr(result, "close", None)
    if hasattr(result, "__await__") and close is not None:
        close()
        name = getattr(handler, "__qualname__", repr(handler))
        message = (
            f"daemonkit: signal handler {name} is a coroutine function; it runs only "
            "under daemonkit.run_async()\n"
        )
        try:
            os.write(2, message.encode())
        except OSError:
            pass


def main_thread_wakeup() -> int | None:
    """The dispatcher's wakeup pipe, if one is active and this is the main thread."""
    dispatcher = _active
    if dispatcher is None or _thread.get_ident() != dispatcher.main_thread:
        return None
    return dispatcher.wakeup_fd()


_active: Dispatcher | None = None


def active_dispatcher() -> Dispatcher | None:
    """The dispatcher the daemon installed, if any (for the asyncio bridge)."""
    return _active


class Installation:
    """A resolved map made ready to install: every object built in the launcher.

    Only ``signal.signal`` calls are left for :meth:`install`, in the freshly
    forked daemon, where each new object and each first touch of memory costs
    a copy-on-write page fault.
    """

    def __init__(self, resolved: ResolvedMap) -> None:
        callbacks: dict[int, Callback] = {}
        self.handlers: list[tuple[int, object]] = []
        for sig, handler in resolved.items():
            if callable(handler) and not isinstance(handler, int):
                callbacks[sig] = handler
            else:  # SIG_IGN/SIG_DFL as the plain ints the C function wants
                self.handlers.append((int(sig), int(handler or 0)))
        self.dispatcher = Dispatcher(callbacks)
        self.handlers += [
            (int(signum), Dispatched(self.dispatcher, handler))
            for signum, handler in callbacks.items()
        ]

    def install(self) -> Dispatcher:
        """Install every handler; the dispatcher becomes the active one."""
        global _active
        install_handlers(self.handlers)
        self.dispatcher.main_thread = _thread.get_ident()  # handlers run in this thread
        _active = self.dispatcher
        return self.dispatcher
