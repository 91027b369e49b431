"""DaemonContext: the policies of a well-behaved daemon, and entering them.

A drop-in for python-daemon's ``daemon.DaemonContext`` (PEP 3143): same
constructor, keyword for keyword, same attributes and methods. Entering the
context (``open()`` or ``with``) validates every policy in the launching
process, detaches with a double fork, and, unlike PEP 3143 libraries, keeps
the launcher waiting until the daemon is really ready, so a daemon that fails
to start makes the launcher print why and exit non-zero.

Deliberate differences from python-daemon: the default umask is ``0o022``
(not ``0``, which makes every file the daemon creates world-writable); SIGTERM
exits with status 0 (a requested, clean shutdown), not 1; a ``uid`` given
without a ``gid`` takes that user's primary group, and dropping root clears
the supplementary groups.
"""

from __future__ import annotations

import atexit
import os
import sys

from . import _detach, _posix, readiness
from ._activation import hand_over as hand_over_activation
from ._lazy import errors
from ._logfiles import LogFiles
from ._plan import Plan, build_plan, resolve_reopen_signal
from ._stop import StopRequest
from .signals import (
    default_signal_map,
    resolve_catchable,
    resolve_signal_map,
)
from .streams import redirect_plan

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from types import FrameType, TracebackType
    from typing import Any, NoReturn, TypeVar

    from .pidfile import PIDFile

    F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["DaemonContext"]


def _log_debug(message: str, *args: object) -> None:
    # Only an application that imported logging can have configured it; do
    # not pay for the import otherwise.
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger("daemonkit").debug(message, *args)


class DaemonContext:
    """Context for turning the current program into a daemon process.

    The constructor takes python-daemon 3.x's keywords with the same
    meaning; every policy is also an attribute that may be changed until
    :meth:`open` is called. daemonkit's own options are keyword-only:

    ``wait_ready``
        When true the launcher waits for :func:`daemonkit.ready` from inside
        the ``with`` body, instead of for the body to be entered.
    ``ready_timeout``
        Seconds the launcher waits for readiness before it stops the daemon
        and exits non-zero (default 90, systemd's start timeout).
    ``reopen_signal``
        The signal on which log files are reopened after rotation (default
        SIGHUP; ``None`` never). The signal map's own handler for it runs
        right after. Log files are ``stdout``/``stderr`` given as paths (or
        as file objects opened for append) and the files of ``logging``
        handlers configured before :meth:`open`, whose descriptors are kept
        open across the detach without being listed in ``files_preserve``.
    ``allow_threads``
        :meth:`open` refuses to detach while other threads run (fork copies
        only the calling thread, so they would vanish silently); true
        allows it.

    The signal map is checked when it is given (a bad entry is a
    :class:`~daemonkit.SignalMapError`, also a ``ValueError``) and can be
    added to with the :meth:`on_signal` decorator. In the daemon, a handler
    never runs inside another, and signals that arrive during the setup are
    delivered once the handlers are installed. :attr:`stop_requested` is set
    by :meth:`terminate` and :meth:`request_stop`, for threads and loops
    that wait for the end.
    """

    __module__ = "daemonkit"

    def __init__(
        self,
        chroot_directory: str | os.PathLike[str] | None = None,
        working_directory: str | os.PathLike[str] = "/",
        umask: int = 0o022,
        uid: int | str | None = None,
        gid: int | str | None = None,
        initgroups: bool = False,
        prevent_core: bool = True,
        detach_process: bool | None = None,
        files_preserve: Iterable[Any] | None = None,
        pidfile: Any = None,
        stdin: Any = None,
        stdout: Any = None,
        stderr: Any = None,
        signal_map: Mapping[Any, Any] | None = None,
        *,
        wait_ready: bool = False,
        ready_timeout: float | None = None,
        reopen_signal: int | str | None = "SIGHUP",
        allow_threads: bool = False,
    ) -> None:
        self.chroot_directory = chroot_directory
        self.working_directory = working_directory
        self.umask = umask
        self.uid = uid
        self.gid = gid
        self.initgroups = initgroups
        self.prevent_core = prevent_core
        self.detach_process = detach_process
        self.files_preserve = files_preserve
        self.pidfile = pidfile
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.stop_requested = StopRequest()
        self.signal_map = default_signal_map() if signal_map is None else signal_map
        resolve_reopen_signal(reopen_signal)  # a bad signal fails here, not at open()
        self.reopen_signal = reopen_signal
        self.allow_threads = allow_threads
        self.wait_ready = wait_ready
        self.ready_timeout = ready_timeout
        self._log_files = LogFiles()
        self._handled_signals: set[int] = set()
        self._is_open = False
        self._owner_pid: int | None = None
        self._exit_hooks = False
        # Set by daemonkit.cli for ``start``: the daemon will exec a program.
        self._exec_is_ready = False
        self._notify_receiver: Any = None

    @property
    def signal_map(self) -> Mapping[Any, Any]:
        """Signals and their handlers (PEP 3143), checked whenever it is set."""
        return self._signal_map

    @signal_map.setter
    def signal_map(self, value: Mapping[Any, Any]) -> None:
        resolve_signal_map(value, self)  # raises errors.SignalMapError naming the entry
        self._signal_map = value

    def on_signal(self, *signals: int | str) -> Callable[[F], F]:
        """Decorator: call the function in the daemon when one of ``signals`` arrives.

        ``signals`` are ``signal.Signals``, numbers or names (``"HUP"``).
        The function takes ``(signum, frame)`` or no argument at all::

            @context.on_signal("HUP")
            def reload():
                config.load()

        It is added to (a copy of) :attr:`signal_map`, so the default
        entries stay unless the function replaces them.
        """
        if not signals:
            raise errors.SignalMapError(
                "on_signal() needs at least one signal, e.g. on_signal('HUP')"
            )
        resolved = [resolve_catchable(sig, "on_signal") for sig in signals]

        def register(function: F) -> F:
            handler = _as_signal_handler(function)
            self.signal_map = {**self.signal_map, **dict.fromkeys(resolved, handler)}
            return function

        return register

    @property
    def is_open(self) -> bool:
        """True once :meth:`open` has succeeded and until :meth:`close`."""
        return self._is_open

    def open(self) -> None:
        """Become a daemon, as the policies say. Does nothing if already open.

        Configuration errors are raised here, in the launching process, before
        any fork. When detaching, the launching process does not return: it
        exits 0 once the daemon is ready, or prints the daemon's error and
        exits 1. Code after ``open()`` runs in the daemon.
        """
        if self._is_open:
            return
        self._check_ready_timeout()
        plan = build_plan(self)
        _log_debug("daemonkit: %s: %s", "detach" if plan.detach else "no detach", plan.reason)
        lock = self._own_pidfile()
        mask: set[int] | None = None
        try:
            if lock is not None and not lock._holding():
                # "Already running" is decided here, before anything happens.
                lock.lock(lock.acquire_timeout)
            # Signals that arrive from here until the handlers are installed
            # in the daemon wait (blocked), rather than kill it unhandled.
            mask = _posix.block_signals(plan.signals)
            keep = self._prepare(plan, lock)
            _posix.flush_standard_streams()
            if plan.detach:
                if lock is not None:
                    lock._handing_down = True
                closing = _detach.detach(
                    self.ready_timeout,
                    self._exec_is_ready,
                    self._notify_receiver,
                    lock,
                    mask,
                    keep,
                    plan.top_fd,
                )
                if lock is not None:
                    lock._adopt()
            else:
                channel = readiness.channel_fd()
                kept = keep if channel is None else {*keep, channel}
                closing = _posix.close_ranges(kept, max(plan.top_fd, *kept))
        except BaseException as exc:
            if mask is not None:
                _posix.set_signal_mask(mask)
            self._undo_launch(plan, lock)
            clearer = _posix.out_of_descriptors(exc)
            if clearer is not None:
                raise clearer from exc
            raise
        try:
            self._enter(plan, lock, mask, closing)
        except BaseException as exc:
            if readiness.pending():
                if isinstance(exc, SystemExit):
                    readiness.report_text(
                        f"the daemon was told to stop (SystemExit({exc.code!r})) "
                        "before it was ready"
                    )
                else:
                    readiness.report_failure(exc)
                if lock is not None and lock._holding():
                    lock.release()  # a failed start leaves no pidfile behind
                _posix.exit_now(1)
            _posix.set_signal_mask(mask)
            self._undo_launch(plan, lock)
            raise
        self._is_open = True
        self._owner_pid = os.getpid()
        if not self.wait_ready:
            readiness.entered()

    def _own_pidfile(self) -> PIDFile | None:
        """The pidfile if it is daemonkit's own (lock taken in the launcher)."""
        module = sys.modules.get("daemonkit.pidfile")  # not imported: cannot be one
        if module is not None and isinstance(self.pidfile, module.PIDFile):
            lock: PIDFile = self.pidfile
            return lock
        return None

    @staticmethod
    def _undo_launch(plan: Plan, lock: PIDFile | None) -> None:
        """Leave nothing behind when starting fails in this process."""
        plan.streams.discard()
        if lock is not None:
            lock._handing_down = False
            if lock._holding():
                lock.release()

    def _check_ready_timeout(self) -> None:
        timeout = self.ready_timeout
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
        ):
            raise errors.ConfigurationError(
                f"ready_timeout must be a positive number of seconds, not {timeout!r}"
            )

    def _prepare(self, plan: Plan, lock: PIDFile | None) -> set[int]:
        """Before the fork, all the daemon's setup that need not happen after it.

        Returns the descriptors the daemon keeps. Whatever is worked out here
        is work the newly forked daemon is spared: there, each first write
        to a page of memory is a copy-on-write fault.
        """
        plan.redirects = redirect_plan(plan.streams)  # opens /dev/null if needed
        keep = plan.preserved | set(plan.streams.keep()) | set(plan.redirects[1])
        keep |= set(self.stop_requested.descriptors())
        if lock is not None:
            keep.add(lock.fileno())
        if plan.chroot_directory is not None or plan.owner is not None:
            # Loaded now, while the library is reachable and we are who we
            # were: after chroot it would be imported from inside the jail
            # (and run as root), after the drop it may be unreadable.
            errors.DaemonError  # noqa: B018 - the attribute loads the module
            if "daemonkit.pidfile" in sys.modules:
                import lockfile  # noqa: F401 - for NotLocked and friends
        self._log_files = plan.log_files
        self._handled_signals = set(plan.signals)
        if not self._exit_hooks:
            self._exit_hooks = True
            atexit.register(self._ignore_signals_at_exit)  # after close (LIFO)
            atexit.register(self.close)  # a no-op unless the context is open
        return keep

    def _enter(
        self, plan: Plan, lock: PIDFile | None, mask: Iterable[int], closing: list[tuple[int, int]]
    ) -> None:
        """The daemon's side of the sequence, in the order that is safe."""
        if plan.detach and plan.activated:
            hand_over_activation(plan.activated)  # $LISTEN_PID now names the daemon
        if self.stop_requested.descriptors():
            self.stop_requested._adopt()  # its pipe, made before open(), is the daemon's
        if lock is not None:
            # Before chroot and the privilege drop; the descriptor stays open
            # so the file can be removed or emptied at exit all the same.
            lock.write_pid()
        if plan.chroot_directory is None:
            _posix.settle(closing, plan.prevent_core, plan.umask, plan.working_directory)
        else:
            # What reporting an error needs, imported while the library is in
            # reach (Python 3.13's traceback imports tokenize lazily).
            import linecache  # noqa: F401
            import tokenize  # noqa: F401
            import traceback  # noqa: F401

            _posix.settle(closing, False, plan.umask, "/")
            _posix.change_root(plan.chroot_directory)
            _posix.settle([], plan.prevent_core, plan.umask, plan.working_directory)
        if plan.owner is not None:
            owner = plan.owner
            _posix.drop_privileges(owner.uid, owner.gid, owner.groups)
        plan.installation.install()
        if self.pidfile is not None and lock is None:
            self.pidfile.__enter__()  # a lockfile-style object, as python-daemon does
        # fds 0-2 last; then the signals held back so far are handled (a
        # SystemExit from one must not undo the streams: they are in use).
        _posix.redirect(*plan.redirects)
        plan.streams.forget()
        _posix.set_signal_mask(mask)

    def close(self) -> None:
        """Leave the daemon context: release the pidfile. Idempotent.

        Only the process that opened the context releases the pidfile; a
        child the daemon forked that reaches ``close()`` leaves it alone.
        """
        if not self._is_open:
            return
        self._is_open = False
        if readiness.pending():  # wait_ready=True, and ready() never came
            readiness.report_text("the daemon left its DaemonContext without calling ready()")
        if os.getpid() != self._owner_pid:
            return
        if self.pidfile is not None:
            # A second SIGTERM must not cut the release short (and leave the
            # pidfile behind): the mapped signals wait until it is done.
            mask = _posix.block_signals(self._handled_signals)
            try:
                self.pidfile.__exit__(None, None, None)
            finally:
                _posix.set_signal_mask(mask)

    def _ignore_signals_at_exit(self) -> None:
        """At interpreter exit, ignore the mapped signals.

        CPython puts every signal it handles back to its default action while
        it finalizes, so a SIGHUP arriving then would kill, with that signal,
        a daemon that is exiting cleanly after SIGTERM (status -1, not 0).
        Ignoring (rather than blocking, which only the calling thread would
        do) holds in every thread still running; finalization leaves
        ``SIG_IGN`` alone.
        """
        if self._owner_pid == os.getpid() and self._handled_signals:
            _posix.ignore_signals(self._handled_signals)

    def __enter__(self) -> DaemonContext:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_value is not None and readiness.pending():
            readiness.report_failure(exc_value)
        self.close()

    def terminate(self, signal_number: int, stack_frame: FrameType | None) -> NoReturn:
        """Signal handler for SIGTERM: a requested, clean shutdown.

        Sets :attr:`stop_requested` (for other threads) and raises
        ``SystemExit(0)`` in the main thread, so ``finally`` blocks and
        ``__exit__`` run (and release the pidfile) and the exit status says
        nothing failed. Under :func:`daemonkit.run_async` it cancels the
        main task instead.
        """
        self.stop_requested.set()
        _log_debug("daemonkit: terminating on signal %s", _posix.signal_name(signal_number))
        raise SystemExit(0)

    def request_stop(self, signal_number: int = 0, stack_frame: FrameType | None = None) -> None:
        """Signal handler that only sets :attr:`stop_requested`.

        For a main loop that winds down by itself: map SIGTERM to
        ``"request_stop"`` and have the loop wait on ``stop_requested``.
        """
        self.stop_requested.set()

    def reopen_log_files(
        self, signal_number: int = 0, stack_frame: FrameType | None = None
    ) -> list[str]:
        """Point log files at fresh files of the same paths (after rotation).

        Runs on :attr:`reopen_signal` by itself; call it directly, or map a
        signal to ``"reopen_log_files"``, to reopen at other times. Returns
        the problems met (a file that cannot be opened keeps the old one).
        """
        return self._log_files.reopen()


def _as_signal_handler(function: Callable[..., Any]) -> Callable[[int, FrameType | None], Any]:
    """``function`` as a ``(signum, frame)`` handler; it may take no argument."""
    if not callable(function):
        raise errors.SignalMapError(f"on_signal: {function!r} is not callable")
    import inspect

    try:
        parameters = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        return function
    try:
        parameters.bind(0, None)
        return function
    except TypeError:
        pass
    try:
        parameters.bind()
    except TypeError:
        raise errors.SignalMapError(
            f"on_signal: {getattr(function, '__qualname__', function)!r} must take "
            "(signum, frame) or no argument"
        ) from None

    import functools

    @functools.wraps(function)
    def call_without_arguments(signum: int, frame: FrameType | None) -> Any:
        return function()

    return call_without_arguments
