"""pytest fixtures for testing daemons: start them for real, and always clean up.

Installing daemonkit registers this module as a pytest plugin (the
``pytest11`` entry point). It defines fixtures and nothing else: no hook, no
option, nothing autouse, and importing it imports no more of daemonkit, so
tests that do not ask for a fixture run exactly as they would without it.

``daemon_runner``
    A :class:`DaemonRunner`. It starts real daemons three ways: a command
    through ``daemonkit start`` (:meth:`~DaemonRunner.start_command`), a
    Python function inside a :class:`~daemonkit.DaemonContext`
    (:meth:`~DaemonRunner.start_callable`), or a program that detaches by
    itself (:meth:`~DaemonRunner.start_launcher`). Each returns once the
    daemon is ready, as a :class:`DaemonHandle` (pid, signals, stop, exit
    status, log, sd_notify messages). For the test's duration the test
    process is a child subreaper (``PR_SET_CHILD_SUBREAPER``), so detached
    daemons become its children: their exit status can be collected and a
    pid cannot be reused behind the test's back. At teardown, pass or fail,
    every daemon it started and every process that was orphaned to the test
    is killed by pid and reaped; processes the test did not start through
    the runner are reported with a :class:`DaemonLeftoverWarning`.
``fake_notify_socket``
    A :class:`NotifyRecorder`: a service manager's end of sd_notify, whose
    address is put in ``$NOTIFY_SOCKET`` for the test (and restored after),
    recording every message and its sender's pid.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path  # loaded by pytest already

import pytest

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from typing import Any, NoReturn

    from .notify import NotifySocketReceiver

__all__ = [
    "DaemonExitedError",
    "DaemonHandle",
    "DaemonLeftoverWarning",
    "DaemonRunner",
    "DaemonStartError",
    "NotifyRecorder",
    "daemon_runner",
    "fake_notify_socket",
]

DEFAULT_TIMEOUT = 30.0  # seconds a start may take, readiness included
ADOPTION_WAIT = 5.0  # seconds for a launched daemon to be re-parented to the test
TEARDOWN_WAIT = 10.0  # seconds teardown spends killing and reaping
ABANDON_WAIT = 2.0  # seconds what a failed start left has to exit by itself


class DaemonStartError(Exception):
    """A daemon did not start: the launcher failed, or the daemon died or stayed silent.

    The message says what happened and quotes the launcher's stderr and the
    end of the daemon's log; the same are attributes, for assertions.
    """

    def __init__(
        self,
        message: str,
        *,
        launcher_exit_code: int | None = None,
        launcher_stderr: str = "",
        log: str = "",
        exit_status: int | None = None,
    ) -> None:
        details = [message]
        if launcher_stderr.strip():
            details.append("launcher stderr:\n" + _indent(launcher_stderr))
        if log.strip():
            details.append("daemon log (end):\n" + _indent(_tail(log)))
        super().__init__("\n".join(details))
        self.launcher_exit_code = launcher_exit_code
        self.launcher_stderr = launcher_stderr
        self.log = log
        self.exit_status = exit_status


class DaemonExitedError(Exception):
    """The daemon exited while the test waited for it (or tried to signal it)."""

    def __init__(self, message: str, exit_status: int | None) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class DaemonLeftoverWarning(pytest.PytestWarning):
    """Teardown killed processes the test left running but had not started through
    ``daemon_runner`` (a daemon's orphaned child, a daemon started some other way),
    or could not kill some."""


class _Exited(Exception):
    """Internal: the watched process exited while :meth:`NotifyRecorder._wait` waited."""


def _indent(text: str) -> str:
    return "".join(f"    {line}\n" for line in text.rstrip("\n").splitlines())


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def _read(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _describe_exit(exit_status: int | None) -> str:
    """``exited with status 3``, ``was killed by SIGKILL``, or unknown."""
    if exit_status is None:
        return "exited (status unknown: not a child of the test)"
    if exit_status < 0:
        return f"was killed by {_signal_name(-exit_status)}"
    return f"exited with status {exit_status}"


def _matches(line: str, wanted: str) -> bool:
    """``READY=1`` matches itself; a bare key such as ``STATUS=`` any value of it."""
    return line == wanted or (wanted.endswith("=") and line.startswith(wanted))


def _exited(pidfd: int) -> bool:
    import select

    return bool(select.select([pidfd], [], [], 0)[0])


def _signal_name(number: int) -> str:
    from ._posix import signal_name

    return signal_name(number)


def _resolve(sig: int | str) -> int:
    from .signals import resolve_signal

    return resolve_signal(sig, "signal")


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
        """:meth:`wait_for`; raises :class:`_Exited` if ``pidfd``'s process ends first."""
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
                if _matches(found, line):
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
                    if _matches(found, line):
                        return found
                raise _Exited(line)

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


class DaemonHandle:
    """A daemon started by :class:`DaemonRunner`, known by pid.

    Its pid stays valid for the handle's life: the daemon is a child of the
    test process (the runner makes it a subreaper), so the pid cannot be
    given to another process before the test reaps it, and it is signalled
    through a pidfd anyway.
    """

    def __init__(
        self,
        pid: int,
        *,
        name: str,
        pidfile: Path | None,
        log_path: Path | None,
        launcher_exit_code: int | None,
        launcher_stdout: str,
        launcher_stderr: str,
        notify: NotifyRecorder | None,
    ) -> None:
        self.pid = pid  #: the daemon's pid (the supervisor's, with ``respawn``)
        self.name = name  #: a name for messages
        self.pidfile = pidfile  #: its pidfile, if it has one
        self.log_path = log_path  #: the file its output goes to (None if not a known file)
        self.launcher_exit_code = launcher_exit_code  #: how the launching process exited
        self.launcher_stdout = launcher_stdout  #: what it printed
        self.launcher_stderr = launcher_stderr  #: what it printed on stderr
        self.notify = notify  #: the recorder of its sd_notify messages (``notify=True``)
        self.exit_status: int | None = None  #: once reaped: exit code, or -N for signal N
        self._reaped = False
        self._pidfd: int | None = os.pidfd_open(pid)

    def __repr__(self) -> str:
        state = "running" if self.alive() else _describe_exit(self.exit_status)
        return f"<DaemonHandle {self.name} pid {self.pid} {state}>"

    def alive(self) -> bool:
        """True until the daemon exits (a zombie counts as exited)."""
        return self._pidfd is not None and not _exited(self._pidfd)

    def children(self) -> list[int]:
        """The daemon's live child processes (a supervisor's program, workers)."""
        from ._posix import children_of

        return children_of(self.pid) if self.alive() else []

    def log(self) -> str:
        """What the daemon wrote to :attr:`log_path` so far ("" if none)."""
        return _read(self.log_path)

    def signal(self, sig: int | str) -> None:
        """Send ``sig`` (``signal.SIGHUP``, ``"HUP"``, ``"SIGHUP"``, 1) to the daemon.

        Raises :class:`DaemonExitedError` if it has exited.
        """
        number = _resolve(sig)
        if self._pidfd is None or not self.alive():
            raise DaemonExitedError(
                f"cannot signal {self.name} (pid {self.pid}): it {_describe_exit(self._collect())}",
                self.exit_status,
            )
        signal.pidfd_send_signal(self._pidfd, number)

    def wait_exit(self, timeout: float = 10.0) -> int | None:
        """Wait until the daemon exits and reap it; its :attr:`exit_status`.

        The status is the exit code, or ``-N`` if signal ``N`` killed it
        (as ``subprocess`` reports it); None if the test could not reap it.
        Raises ``TimeoutError`` if it is still running after ``timeout``.
        """
        from ._posix import pidfd_exits_within

        if self._pidfd is not None and not pidfd_exits_within(self._pidfd, timeout):
            raise TimeoutError(f"{self.name} (pid {self.pid}) still runs after {timeout:g} s")
        return self._collect()

    def stop(self, timeout: float = 10.0, sig: int | str = "TERM") -> int | None:
        """Stop the daemon as an operator would; its exit status.

        With a pidfile the daemon holds, through :func:`daemonkit.control.stop`
        (``daemonkit stop``); otherwise ``sig`` is sent to its pid. A daemon
        still running ``timeout`` seconds later is killed (SIGKILL) and
        ``TimeoutError`` is raised: a daemon that does not stop when told to
        is a bug the test should see.
        """
        number = _resolve(sig)
        if not self.alive():
            return self._collect()
        began = time.monotonic()
        if self.pidfile is not None and self._holds_pidfile():
            from . import control

            control.stop(self.pidfile, sig=number, timeout=timeout)
        else:
            try:
                self.signal(number)
            except DaemonExitedError:
                pass
        try:
            return self.wait_exit(max(0.0, timeout - (time.monotonic() - began)))
        except TimeoutError:
            self.kill()
            raise TimeoutError(
                f"{self.name} (pid {self.pid}) did not exit within {timeout:g} s of "
                f"{_signal_name(number)}; it was killed"
            ) from None

    def kill(self) -> int | None:
        """SIGKILL the daemon and reap it; its exit status."""
        try:
            self.signal(signal.SIGKILL)
        except DaemonExitedError:
            pass
        return self.wait_exit(TEARDOWN_WAIT)

    def notify_messages(self) -> list[str]:
        """Every sd_notify line the daemon sent so far (started with ``notify=True``)."""
        return self._recorder().messages()

    def wait_for_message(self, line: str, timeout: float = 10.0, *, since: int = 0) -> str:
        """Wait for an sd_notify line from the daemon; see :meth:`NotifyRecorder.wait_for`.

        Raises :class:`DaemonExitedError` at once if the daemon exits first.
        """
        recorder = self._recorder()
        try:
            return recorder._wait(line, timeout, since, self._pidfd)
        except _Exited:
            status = self._collect()
            raise DaemonExitedError(
                f"{self.name} (pid {self.pid}) {_describe_exit(status)} before it sent "
                f"{line!r}; it sent {recorder.messages()[since:]!r}; its log:\n"
                + _indent(_tail(self.log())),
                status,
            ) from None

    def _recorder(self) -> NotifyRecorder:
        if self.notify is None:
            raise RuntimeError(f"{self.name} was not started with notify=True")
        return self.notify

    def _holds_pidfile(self) -> bool:
        from .pidfile import PIDFile

        assert self.pidfile is not None
        return PIDFile(str(self.pidfile)).holder().pid == self.pid

    def _collect(self) -> int | None:
        """Reap the daemon if it has exited; its exit status (None if unknown)."""
        if not self._reaped and self._pidfd is not None and _exited(self._pidfd):
            self._record(_reap(self.pid, block=True))  # it exited: no wait to speak of
        return self.exit_status

    def _record(self, wait_status: int | None) -> None:
        self._reaped = True
        if wait_status is not None:
            self.exit_status = os.waitstatus_to_exitcode(wait_status)

    def _release(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self.notify is not None:
            self.notify.close()


def _reap(pid: int, block: bool = False) -> int | None:
    """The wait status of our exited child ``pid``; None if it is not ours (or,
    without ``block``, still running)."""
    try:
        found, status = os.waitpid(pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        return None
    return status if found == pid else None


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rpartition(b")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _describe_process(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            words = cmdline.read().rstrip(b"\0").split(b"\0")
    except OSError:
        words = []
    command = " ".join(word.decode(errors="replace") for word in words)[:200]
    return f"pid {pid} ({command or '?'})"


def _command_name(argv: Sequence[str]) -> str:
    """``echo_server.py`` for ``python examples/echo_server.py ...``, else the program."""
    program = os.path.basename(argv[0])
    if program.startswith("python") and len(argv) > 1 and not argv[1].startswith("-"):
        return os.path.basename(argv[1])
    return program


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return cleaned[:40] or "daemon"


def _log_target(options: dict[str, Any], default: Path) -> Path | None:
    """Where the daemon's output goes: ``default`` for both streams unless the
    caller chose (then the file it named for stderr, or stdout; None if not a path)."""
    given = options.get("stderr") or options.get("stdout")
    if given is None:
        options["stdout"] = options["stderr"] = str(default)
        return default
    return Path(given) if isinstance(given, (str, os.PathLike)) else None


def _option_arguments(options: Mapping[str, Any]) -> list[str]:
    """``daemonkit start`` options from keywords: ``umask=0o027`` is ``--umask 027``,
    ``respawn=True`` is ``--respawn``, ``backoff=(0.1, 2)`` is ``--backoff 0.1..2``."""
    arguments: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            arguments.append(flag)
        elif key == "umask" and isinstance(value, int):
            arguments += [flag, format(value, "03o")]
        elif key == "backoff" and isinstance(value, (tuple, list)):
            arguments += [flag, f"{value[0]}..{value[1]}"]
        elif isinstance(value, (list, tuple)):
            for item in value:
                arguments += [flag, os.fspath(item)]
        else:
            arguments += [flag, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]
    return arguments


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
        self._was_subreaper = False
        self._baseline: set[tuple[int, int | None]] = set()
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
        from . import _posix

        self._was_subreaper = _posix.is_subreaper()
        if not self._was_subreaper and not _posix.set_subreaper(True):
            raise RuntimeError("daemon_runner needs Linux's PR_SET_CHILD_SUBREAPER")
        self._baseline = {(pid, _start_time(pid)) for pid in self._children()}
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
        tracked = {handle.pid: handle for handle in self.daemons}
        strays = [
            _describe_process(pid)
            for pid in self._new_children()
            if pid not in tracked and _running(pid)
        ]
        for handle in self.daemons:
            if handle.alive():
                try:
                    handle.signal(signal.SIGKILL)
                except (DaemonExitedError, ProcessLookupError):
                    pass
        deadline = time.monotonic() + TEARDOWN_WAIT
        stuck: list[int] = []
        while True:  # killing one may orphan its children to us: until none is left
            children = self._new_children()
            if not children:
                break
            for pid in children:
                try:
                    os.kill(pid, signal.SIGKILL)  # our unreaped child: the pid is still its
                except ProcessLookupError:
                    pass
            for pid in children:
                self._reap_child(pid, tracked, deadline)
            if time.monotonic() >= deadline:  # something will not die, or keeps forking
                stuck = [pid for pid in self._new_children() if _running(pid)]
                break
        for handle in self.daemons:
            if not handle._reaped:
                handle._collect()
            handle._release()
        if not self._was_subreaper:
            from . import _posix

            _posix.set_subreaper(False)
        report = []
        if strays:
            report.append(
                "daemon_runner killed processes the test left running but did not start "
                "through it: " + ", ".join(strays)
            )
        if stuck:
            report.append(
                "daemon_runner could not kill: " + ", ".join(map(_describe_process, stuck))
            )
        return "; ".join(report)

    def _children(self) -> list[int]:
        from ._posix import children_of

        return children_of(os.getpid())

    def _snapshot(self) -> set[tuple[int, int | None]]:
        """The test process's children now, each with its start time."""
        return {(pid, _start_time(pid)) for pid in self._children()}

    def _new_children(self, since: set[tuple[int, int | None]] | None = None) -> list[int]:
        """Children that came after the runner opened (or after ``since``)."""
        known = self._baseline if since is None else since
        return [pid for pid in self._children() if (pid, _start_time(pid)) not in known]

    def _abandon(
        self, snapshot: set[tuple[int, int | None]], recorder: NotifyRecorder | None
    ) -> None:
        """After a failed start: what it left (a daemon still dying after it
        reported its error, the double fork's intermediate) gets a moment to
        exit, then SIGKILL; all is reaped. None of it is the test's leftover."""
        if recorder is not None and not any(d.notify is recorder for d in self.daemons):
            recorder.close()
        tracked = {handle.pid: handle for handle in self.daemons}
        deadline = time.monotonic() + ABANDON_WAIT
        while True:
            left = [pid for pid in self._new_children(snapshot) if pid not in tracked]
            if not any(_running(pid) for pid in left) or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        reap_by = time.monotonic() + TEARDOWN_WAIT
        while left:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)  # our unreaped child: the pid is still its
                except ProcessLookupError:
                    pass
                self._reap_child(pid, tracked, reap_by)
            if time.monotonic() >= reap_by:
                break
            left = [pid for pid in self._new_children(snapshot) if pid not in tracked]

    @staticmethod
    def _reap_child(pid: int, tracked: dict[int, DaemonHandle], deadline: float) -> None:
        """Wait (until ``deadline``) for our child ``pid`` to die and reap it."""
        from ._posix import exits_within

        exits_within(pid, max(0.0, deadline - time.monotonic()))
        status = _reap(pid)
        if status is not None and pid in tracked:
            tracked[pid]._record(status)

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("this DaemonRunner is closed (or was never opened)")

    def _paths(self, name: str, suffix: str) -> Path:
        return self.path / f"{self._count}-{_safe_name(name)}.{suffix}"

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
        name = name or _command_name(argv)
        pidfile_path = self._resolve_pidfile(pidfile, name)
        log_path = _log_target(options, self._paths(name, "log"))
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
        snapshot = self._snapshot()
        launcher = [
            sys.executable,
            "-m",
            "daemonkit",
            "start",
            "--pidfile",
            str(pidfile_path),
            *_option_arguments(options),
            "--",
            *argv,
        ]
        try:
            return self._launch(
                launcher,
                name,
                pidfile_path,
                log_path,
                recorder,
                self._environment(env, extra),
                timeout,
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
        name = name or _command_name(argv)
        recorder = NotifyRecorder() if notify else None
        extra = recorder.environment() if recorder is not None else {}
        snapshot = self._snapshot()
        try:
            return self._launch(
                argv,
                name,
                Path(os.path.abspath(pidfile)) if pidfile is not None else None,
                Path(log_path) if log_path is not None else None,
                recorder,
                self._environment(env, extra),
                timeout,
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
        log_path = _log_target(options, self._paths(name, "log"))
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
        snapshot = self._snapshot()
        launcher = os.fork()
        if launcher == 0:
            _be_launcher(
                context, function, environment, report_read, report_write, out_path, err_path
            )
        os.close(report_write)
        try:
            return self._finish_callable(
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

    def _finish_callable(
        self,
        launcher: int,
        report: int,
        name: str,
        pidfile: Any,
        log_path: Path | None,
        out_path: Path,
        err_path: Path,
        recorder: NotifyRecorder | None,
        timeout: float,
        detached: bool,
    ) -> DaemonHandle:
        """In the test: the forked launcher's verdict, then the daemon's pid from the pipe.

        Without detaching (``detach_process=False``) the forked process is the
        daemon itself: its pid comes once it entered the context.
        """
        from ._posix import exits_within

        deadline = time.monotonic() + timeout + 10.0
        pidfile_path = (
            Path(pidfile.path) if isinstance(getattr(pidfile, "path", None), str) else None
        )
        if not detached:
            pid = _read_pid(report, deadline)
            if pid is None:
                if not exits_within(launcher, 1.0):
                    os.kill(launcher, signal.SIGKILL)
                status = os.waitstatus_to_exitcode(os.waitpid(launcher, 0)[1])
                raise DaemonStartError(
                    f"{name} {_describe_exit(status)} before it entered its DaemonContext",
                    launcher_stderr=_read(err_path),
                    log=_read(log_path),
                    exit_status=status,
                )
            return self._adopt(pid, name, pidfile_path, log_path, None, "", "", recorder, deadline)
        if not exits_within(launcher, timeout + 10.0):
            os.kill(launcher, signal.SIGKILL)
            raise DaemonStartError(
                f"the launcher of {name} did not exit within {timeout + 10:g} s",
                launcher_stderr=_read(err_path),
                log=_read(log_path),
            )
        code = os.waitstatus_to_exitcode(os.waitpid(launcher, 0)[1])
        if code != 0:
            raise DaemonStartError(
                f"{name} did not start: its launcher exited with status {code}",
                launcher_exit_code=code,
                launcher_stderr=_read(err_path),
                log=_read(log_path),
            )
        pid = _read_pid(report, deadline)
        if pid is None:
            raise DaemonStartError(
                f"{name}: the launcher exited 0, but the daemon never reported its pid",
                launcher_exit_code=0,
                launcher_stderr=_read(err_path),
                log=_read(log_path),
            )
        return self._adopt(
            pid,
            name,
            pidfile_path,
            log_path,
            0,
            _read(out_path),
            _read(err_path),
            recorder,
            deadline,
        )

    def _resolve_pidfile(self, pidfile: str | os.PathLike[str] | None, name: str) -> Path:
        if pidfile is None:
            return self._paths(name, "pid")
        return Path(os.path.abspath(pidfile))

    def _launch(
        self,
        argv: list[str],
        name: str,
        pidfile: Path | None,
        log_path: Path | None,
        recorder: NotifyRecorder | None,
        environment: dict[str, str],
        timeout: float,
    ) -> DaemonHandle:
        """Run a launcher process to its end; adopt the daemon it left."""
        import subprocess

        out_path, err_path = self._paths(name, "launcher.out"), self._paths(name, "launcher.err")
        before = set(self._children())
        deadline = time.monotonic() + timeout + 10.0
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=environment
            )
        try:
            code = process.wait(timeout=timeout + 10.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise DaemonStartError(
                f"the launcher of {name} did not exit within {timeout + 10:g} s "
                "(does the program detach?)",
                launcher_stderr=_read(err_path),
                log=_read(log_path),
            ) from None
        if code != 0:
            raise DaemonStartError(
                f"{name} did not start: {argv[0]} exited with status {code}",
                launcher_exit_code=code,
                launcher_stderr=_read(err_path),
                log=_read(log_path),
            )
        if pidfile is not None:
            pid = self._pid_from_pidfile(pidfile, deadline)
        else:
            pid = self._orphan(before | {process.pid}, deadline)
        if pid is None:
            where = f"{pidfile} names no live daemon" if pidfile else "no daemon was left"
            raise DaemonStartError(
                f"{name}: the launcher exited 0, but {where} (did it exit at once?)",
                launcher_exit_code=0,
                launcher_stderr=_read(err_path),
                log=_read(log_path),
            )
        return self._adopt(
            pid,
            name,
            pidfile,
            log_path,
            code,
            _read(out_path),
            _read(err_path),
            recorder,
            deadline,
        )

    @staticmethod
    def _pid_from_pidfile(pidfile: Path, deadline: float) -> int | None:
        from .pidfile import PIDFile, PIDStatus

        while True:
            found = PIDFile(str(pidfile)).holder()
            if found.state != PIDStatus.STARTING or time.monotonic() >= deadline:
                return found.pid if found.state == PIDStatus.RUNNING else None
            time.sleep(0.005)

    def _orphan(self, known: set[int], deadline: float) -> int | None:
        """The daemon a launcher left: the new child of ours in a session of its own.

        The double fork's intermediate process, a session leader, is
        adopted too, for the moment until it exits: it is not the daemon.
        """
        ours = os.getsid(0)
        tracked = {handle.pid for handle in self.daemons}
        began = time.monotonic()
        until = min(deadline, began + ADOPTION_WAIT)
        while True:
            leaders: list[int] = []
            others: list[int] = []
            for pid in self._children():
                if pid in known or pid in tracked or not _running(pid):
                    continue
                try:
                    session = os.getsid(pid)
                except ProcessLookupError:
                    continue
                if session != ours:
                    (leaders if session == pid else others).append(pid)
            if len(others) == 1:
                return others[0]
            if not others and len(leaders) == 1 and time.monotonic() - began > 0.2:
                return leaders[0]  # a single fork and setsid: the leader stayed
            if time.monotonic() >= until:
                if others or leaders:
                    raise DaemonStartError(
                        f"several processes were adopted at once ({others + leaders}): "
                        "give a pidfile to tell the daemon"
                    )
                return None
            time.sleep(0.005)

    def _adopt(
        self,
        pid: int,
        name: str,
        pidfile: Path | None,
        log_path: Path | None,
        launcher_code: int | None,
        launcher_out: str,
        launcher_err: str,
        recorder: NotifyRecorder | None,
        deadline: float,
    ) -> DaemonHandle:
        """Track ``pid`` once it is the test's child; wait for READY=1 if asked."""
        from ._posix import descends_from, parent_of

        me = os.getpid()
        if parent_of(pid) is None:
            raise DaemonStartError(
                f"{name} (pid {pid}) exited right after it started (before its adoption)",
                launcher_exit_code=launcher_code,
                launcher_stderr=launcher_err,
                log=_read(log_path),
            )
        if not descends_from(pid, me):
            raise DaemonStartError(
                f"{name}: pid {pid} was not started by this test (already running?)",
                launcher_exit_code=launcher_code,
                launcher_stderr=launcher_err,
            )
        until = min(deadline, time.monotonic() + ADOPTION_WAIT)
        while parent_of(pid) not in (me, None) and time.monotonic() < until:
            time.sleep(0.002)  # the intermediate process is leaving
        try:
            handle = DaemonHandle(
                pid,
                name=name,
                pidfile=pidfile,
                log_path=log_path,
                launcher_exit_code=launcher_code,
                launcher_stdout=launcher_out,
                launcher_stderr=launcher_err,
                notify=recorder,
            )
        except ProcessLookupError:
            raise DaemonStartError(
                f"{name} (pid {pid}) exited right after it started",
                launcher_exit_code=launcher_code,
                launcher_stderr=launcher_err,
                log=_read(log_path),
            ) from None
        self.daemons.append(handle)
        if recorder is not None:
            try:
                handle.wait_for_message("READY=1", max(0.0, deadline - 10.0 - time.monotonic()))
            except (DaemonExitedError, TimeoutError) as exc:
                handle.kill()  # not started, as far as the test is concerned
                raise DaemonStartError(
                    f"{name} (pid {pid}) did not send READY=1: {exc}",
                    launcher_exit_code=launcher_code,
                    launcher_stderr=launcher_err,
                    exit_status=handle.exit_status,
                ) from None
        return handle


def _read_pid(fd: int, deadline: float) -> int | None:
    """The pid the daemon wrote on the report pipe; None at end of file or deadline."""
    import select

    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return None
        chunk = os.read(fd, 64)
        if not chunk:
            return None
        data += chunk
    return int(data)


def _be_launcher(
    context: Any,
    function: Callable[[], object],
    environment: dict[str, str],
    report_read: int,
    report_write: int,
    out_path: Path,
    err_path: Path,
) -> NoReturn:
    """The forked launcher of :meth:`DaemonRunner.start_callable`; never returns.

    Standard streams are its own files (not pytest's capture), then the
    context is entered: the launcher leaves inside ``open()`` with its
    verdict, and the daemon runs the function and leaves with its status.
    Nothing returns into the test's code.
    """
    code = 1
    try:
        os.close(report_read)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        for fd, path in ((1, out_path), (2, err_path)):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(target, fd)
            os.close(target)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - for the process's life
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        faulthandler = sys.modules.get("faulthandler")
        if faulthandler is not None and faulthandler.is_enabled():
            faulthandler.enable(sys.stderr)  # pytest's own descriptor is about to be closed
        os.environ.clear()
        os.environ.update(environment)
        context.open()  # the launcher exits in here; from now on this is the daemon
        os.write(report_write, f"{os.getpid()}\n".encode())
        os.close(report_write)
        try:
            with context:
                result = function()
            code = result if isinstance(result, int) and not isinstance(result, bool) else 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
    except BaseException:  # before the daemon: a failure of the launcher itself
        try:
            import traceback

            traceback.print_exc()
        except BaseException:
            pass
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        os._exit(code)


@pytest.fixture
def daemon_runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonRunner]:
    """Start real daemons; every one (and every orphan) is killed by pid at teardown.

    See :class:`DaemonRunner`. Teardown warns (:class:`DaemonLeftoverWarning`)
    about processes the test left running without starting them through it.
    """
    with DaemonRunner(tmp_path_factory.mktemp("daemon_runner")) as runner:
        yield runner


@pytest.fixture
def fake_notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyRecorder]:
    """A stand-in service manager: ``$NOTIFY_SOCKET`` names a socket the test reads.

    The variable is set in ``os.environ`` for the test (restored after), so
    :func:`daemonkit.notify.notify` and :func:`daemonkit.ready` in the test
    process, and programs it starts, report to the :class:`NotifyRecorder`.
    """
    recorder = NotifyRecorder()
    monkeypatch.setenv("NOTIFY_SOCKET", recorder.address)
    try:
        yield recorder
    finally:
        recorder.close()
