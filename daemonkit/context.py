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
from collections.abc import Iterable, Mapping
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

from . import _detach, _posix, readiness
from ._activation import hand_over as hand_over_activation
from ._plan import Plan, build_plan
from .signals import default_signal_map, install_signal_map
from .streams import redirect_standard_streams

if TYPE_CHECKING:
    from .pidfile import PIDFile

__all__ = ["DaemonContext"]


def _flush_standard_streams() -> None:
    """Flush Python's buffers so nothing written so far is output twice."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


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
        self.signal_map: Mapping[Any, Any] = (
            default_signal_map() if signal_map is None else signal_map
        )
        self.wait_ready = wait_ready
        self.ready_timeout = ready_timeout
        self._is_open = False
        self._owner_pid: int | None = None
        # Set by daemonkit.cli for ``start``: the daemon will exec a program.
        self._exec_is_ready = False
        self._notify_receiver: Any = None

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
        try:
            if lock is not None and not lock._holding():
                # "Already running" is decided here, before anything happens.
                lock.lock(lock.acquire_timeout)
            _flush_standard_streams()
            if plan.detach:
                if lock is not None:
                    lock._handing_down = True
                _detach.detach(self.ready_timeout, self._exec_is_ready, self._notify_receiver, lock)
                if lock is not None:
                    lock._adopt()
        except BaseException:
            self._undo_launch(plan, lock)
            raise
        try:
            self._enter(plan, lock)
        except BaseException as exc:
            if readiness.pending():
                readiness.report_failure(exc)
                if lock is not None and lock._holding():
                    lock.release()  # a failed start leaves no pidfile behind
                _posix.exit_now(1)
            self._undo_launch(plan, lock)
            raise
        self._is_open = True
        self._owner_pid = os.getpid()
        atexit.register(self.close)
        if not self.wait_ready:
            readiness.ready()

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
        from .errors import ConfigurationError

        timeout = self.ready_timeout
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
        ):
            raise ConfigurationError(
                f"ready_timeout must be a positive number of seconds, not {timeout!r}"
            )

    def _enter(self, plan: Plan, lock: PIDFile | None) -> None:
        """The daemon's side of the sequence, in the order that is safe."""
        if plan.detach:
            hand_over_activation(plan.activated)  # $LISTEN_PID now names the daemon
        if lock is not None:
            # Before chroot and the privilege drop; the descriptor stays open
            # so the file can be removed or emptied at exit all the same.
            lock.write_pid()
        plan.streams.open_null()
        keep = plan.preserved | set(plan.streams.keep())
        if lock is not None:
            keep.add(lock.fileno())
        channel = readiness.channel_fd()
        if channel is not None:
            keep.add(channel)
        _posix.close_fds_except(keep, max([plan.top_fd, *keep]))
        if plan.chroot_directory is not None:
            # What reporting an error needs, imported while the library is in
            # reach (Python 3.13's traceback imports tokenize lazily).
            import linecache  # noqa: F401
            import tokenize  # noqa: F401
            import traceback  # noqa: F401

            _posix.change_root(plan.chroot_directory)
        if plan.prevent_core:
            _posix.prevent_core_dumps()
        os.umask(plan.umask)
        _posix.change_directory(plan.working_directory)
        if plan.owner is not None:
            owner = plan.owner
            _posix.drop_privileges(owner.uid, owner.gid, owner.groups)
        install_signal_map(plan.signals)
        if self.pidfile is not None and lock is None:
            self.pidfile.__enter__()  # a lockfile-style object, as python-daemon does
        redirect_standard_streams(plan.streams)

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
            self.pidfile.__exit__(None, None, None)

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

        Raises ``SystemExit(0)``, so ``finally`` blocks and ``__exit__`` run
        (and release the pidfile) and the exit status says nothing failed.
        """
        _log_debug("daemonkit: terminating on signal %s", _posix.signal_name(signal_number))
        raise SystemExit(0)
