"""Starting real daemons for a test, and killing all of them at its end: :class:`DaemonRunner`.

Part of the pytest plugin (see :mod:`daemonkit.testing`, which re-exports
:class:`DaemonRunner` and gives one to tests as the ``daemon_runner``
fixture). The runner prepares each start (names, files, environment,
``daemonkit start``'s arguments) and runs its launcher; the daemon the
launcher leaves is adopted by an :class:`~daemonkit._testing_adopt.Adopter`,
and the test process's children are looked after by a
:class:`~daemonkit._testing_reaper.ChildReaper`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path  # loaded by pytest already

from ._testing_adopt import Adopter
from ._testing_callable import be_launcher, finish_callable
from ._testing_errors import DaemonLeftoverWarning
from ._testing_notify import NotifyRecorder
from ._testing_options import command_name, log_target, option_arguments, safe_name
from ._testing_reaper import ChildReaper

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

    from ._testing_handle import DaemonHandle
    from ._testing_reaper import Snapshot

DEFAULT_TIMEOUT = 30.0  # seconds a start may take, readiness included


class DaemonRunner:
    """Starts real daemons for a test and kills every one of them at the end.

    The ``daemon_runner`` fixture gives one; it is also a context manager,
    for a fixture of a wider scope::

        @pytest.fixture(scope="module")
        def server(tmp_path_factory):
            with DaemonRunner(tmp_path_factory.mktemp("server")) as runner:
                yield runner.start_command([...], notify=True)

    While it is open, the test process is a child subreaper, so every
    detached daemon (and every orphan of its descendants) becomes its
    child. :meth:`close` kills them all by pid and reaps them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path  #: a directory of the runner's own: pidfiles, logs
        self.daemons: list[DaemonHandle] = []  #: every daemon started, in order
        self._count = 0
        self._reaper = ChildReaper()
        self._open = False

    def __enter__(self) -> DaemonRunner:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        leftovers = self.close()
        if leftovers:
            import warnings

            warnings.warn(DaemonLeftoverWarning(leftovers), stacklevel=2)

    # -- setting up and tearing down --------------------------------------------------

    def open(self) -> None:
        """Become a subreaper and note which children the test process has already."""
        self._reaper.start()
        self._open = True

    def close(self) -> str:
        """Kill and reap every daemon and every orphan that came to the test; idempotent.

        Returns a description of what should not have been there (processes
        the test did not start through the runner, processes that would not
        die), "" if nothing.
        """
        if not self._open:
            return ""
        self._open = False
        return self._reaper.finish(self.daemons)

    def _abandon(self, snapshot: Snapshot, recorder: NotifyRecorder | None) -> None:
        """After a failed start: what it left (a daemon still dying after it
        reported its error, the double fork's intermediate) gets a moment to
        exit, then SIGKILL; all is reaped. None of it is the test's leftover."""
        if recorder is not None and not any(d.notify is recorder for d in self.daemons):
            recorder.close()
        self._reaper.abandon(snapshot, self.daemons)

    def _adopter(self) -> Adopter:
        """What finds this start's daemon and appends its handle to :attr:`daemons`."""
        return Adopter(self._reaper, self.daemons)

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("this DaemonRunner is closed (or was never opened)")

    def _paths(self, name: str, suffix: str) -> Path:
        return self.path / f"{self._count}-{safe_name(name)}.{suffix}"

    @staticmethod
    def _environment(
        env: Mapping[str, str | None] | None, extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The test's environment, with ``env`` merged over it (None removes a variable)."""
        environment = dict(os.environ)
        for key, value in dict(env or {}).items():
            if value is None:
                environment.pop(key, None)
            else:
                environment[key] = value
        environment.update(extra or {})
        return environment

    # -- starting ----------------------------------------------------------------------

    def start_command(
        self,
        command: Sequence[str | os.PathLike[str]],
        *,
        pidfile: str | os.PathLike[str] | None = None,
        notify: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        env: Mapping[str, str | None] | None = None,
        name: str | None = None,
        **options: Any,
    ) -> DaemonHandle:
        """Run ``python -m daemonkit start [OPTIONS] -- COMMAND``; the daemon, once ready.

        ``options`` are ``daemonkit start``'s: ``chdir="/srv"``,
        ``umask=0o027``, ``user="nobody"``, ``respawn=True`` (or
        ``"always"``), ``backoff=(0.1, 2)``, ``max_restarts=3``,
        ``process_group=True``, ``stdout=path``... The daemon's stdout and
        stderr go to :attr:`DaemonHandle.log_path` unless ``stdout`` or
        ``stderr`` say otherwise. ``pidfile`` defaults to a new file in
        :attr:`path`. ``env`` is merged over the test's environment (a
        value of None removes a variable).

        ``notify=True``: the test is the daemon's service manager. The
        daemon gets ``$NOTIFY_SOCKET``, this returns only once it sent
        ``READY=1``, and :meth:`DaemonHandle.notify_messages` has every line
        it sends. With ``respawn``/``init`` the command is started with
        ``--notify`` and the supervisor relays its program's messages.

        Raises :class:`DaemonStartError` if ``daemonkit start`` fails, or
        the daemon dies or stays silent for ``timeout`` seconds.
        """
        from .notify import pidfile_notify_name

        self._check_open()
        self._count += 1
        argv = [os.fspath(word) for word in command]
        if not argv:
            raise ValueError("start_command needs a command")
        name = name or command_name(argv)
        pidfile_path = self._resolve_pidfile(pidfile, name)
        log_path = log_target(options, self._paths(name, "log"))
        supervised = options.get("respawn") not in (None, False, "no") or bool(options.get("init"))
        recorder = None
        extra: dict[str, str] = {}
        if notify and supervised:  # the supervisor relays to where ``reload --notify`` listens
            recorder = NotifyRecorder(pidfile_notify_name(str(pidfile_path)))
            options["notify"] = True
        elif notify:
            recorder = NotifyRecorder()
            extra = recorder.environment()
        options["timeout"] = timeout
        snapshot = self._reaper.snapshot()
        launcher = [
            sys.executable,
            "-m",
            "daemonkit",
            "start",
            "--pidfile",
            str(pidfile_path),
            *option_arguments(options),
            "--",
            *argv,
        ]
        try:
            return self._adopter().launch(
                launcher,
                name,
                pidfile_path,
                log_path,
                recorder,
                self._environment(env, extra),
                timeout,
                self._paths(name, "launcher.out"),
                self._paths(name, "launcher.err"),
            )
        except BaseException:
            self._abandon(snapshot, recorder)
            raise

    def start_launcher(
        self,
        command: Sequence[str | os.PathLike[str]],
        *,
        pidfile: str | os.PathLike[str] | None = None,
        notify: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        env: Mapping[str, str | None] | None = None,
        name: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
    ) -> DaemonHandle:
        """Run a program that detaches by itself (its own ``DaemonContext``,
        ``app.py start``); the daemon it leaves behind, once the program exited 0.

        Give ``pidfile`` if the program writes one (the daemon is found by
        it, and :meth:`DaemonHandle.stop` uses it); otherwise the daemon is
        the process the test adopts when the program exits. ``log_path``
        tells :meth:`DaemonHandle.log` where the program logs. ``notify``
        and ``env`` are as for :meth:`start_command`. Raises
        :class:`DaemonStartError` if the program exits non-zero or leaves
        no daemon.
        """
        self._check_open()
        self._count += 1
        argv = [os.fspath(word) for word in command]
        if not argv:
            raise ValueError("start_launcher needs a command")
        name = name or command_name(argv)
        recorder = NotifyRecorder() if notify else None
        extra = recorder.environment() if recorder is not None else {}
        snapshot = self._reaper.snapshot()
        try:
            return self._adopter().launch(
                argv,
                name,
                Path(os.path.abspath(pidfile)) if pidfile is not None else None,
                Path(log_path) if log_path is not None else None,
                recorder,
                self._environment(env, extra),
                timeout,
                self._paths(name, "launcher.out"),
                self._paths(name, "launcher.err"),
            )
        except BaseException:
            self._abandon(snapshot, recorder)
            raise

    def start_callable(
        self,
        function: Callable[[], object],
        *,
        notify: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        env: Mapping[str, str | None] | None = None,
        name: str | None = None,
        **options: Any,
    ) -> DaemonHandle:
        """Run ``function()`` as a real daemon; return once it is ready.

        A forked copy of the test process is the launcher: it enters a
        :class:`daemonkit.DaemonContext` made with ``options`` (any of its
        keywords; ``detach_process=True`` by default, ``pidfile`` may be a
        path), and the daemon runs ``function`` inside it. Without
        ``wait_ready=True`` the daemon is ready once the ``with`` body is
        entered; with it, once ``function`` calls :func:`daemonkit.ready`.
        ``detach_process=False`` runs it as systemd would (no fork: the
        forked copy is the daemon); ``notify=True`` then waits for its
        ``READY=1``.
        Its return value (an int, or None for 0) or ``SystemExit`` is the
        daemon's exit status; an exception is printed to its log and exits 1.
        The function may be a closure: it is not pickled. The daemon's
        stdout and stderr go to :attr:`DaemonHandle.log_path` unless
        ``stdout``/``stderr`` say otherwise.

        A configuration error (a bad signal map, a missing directory) is
        raised here, as ``DaemonContext`` raises it. Raises
        :class:`DaemonStartError` if the daemon failed before it was ready.
        """
        from .context import DaemonContext
        from .pidfile import PIDFile

        self._check_open()
        self._count += 1
        name = name or str(getattr(function, "__name__", "daemon"))
        log_path = log_target(options, self._paths(name, "log"))
        pidfile = options.get("pidfile")
        if isinstance(pidfile, (str, os.PathLike)):
            pidfile = options["pidfile"] = PIDFile(os.path.abspath(pidfile))
        options.setdefault("detach_process", True)
        options.setdefault("ready_timeout", timeout)
        report_read, report_write = os.pipe()
        options["files_preserve"] = [*(options.get("files_preserve") or ()), report_write]
        try:
            context = DaemonContext(**options)
        except BaseException:
            os.close(report_read)
            os.close(report_write)
            raise
        recorder = NotifyRecorder() if notify else None
        environment = self._environment(env, recorder.environment() if recorder else {})
        out_path, err_path = self._paths(name, "launcher.out"), self._paths(name, "launcher.err")
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):
                pass
        snapshot = self._reaper.snapshot()
        launcher = os.fork()
        if launcher == 0:
            be_launcher(
                context, function, environment, report_read, report_write, out_path, err_path
            )
        os.close(report_write)
        try:
            return finish_callable(
                self._adopter(),
                launcher,
                report_read,
                name,
                pidfile,
                log_path,
                out_path,
                err_path,
                recorder,
                timeout,
                context.detach_process is not False,
            )
        except BaseException:
            self._abandon(snapshot, recorder)
            raise
        finally:
            os.close(report_read)

    def _resolve_pidfile(self, pidfile: str | os.PathLike[str] | None, name: str) -> Path:
        """``pidfile`` as an absolute path; a new file in :attr:`path` if None."""
        if pidfile is None:
            return self._paths(name, "pid")
        return Path(os.path.abspath(pidfile))
