"""Supervise a program: restart it with backoff, forward signals, reap orphans.

What supervisord, tini and dumb-init do next to a daemon library, folded into
one class that ``daemonkit run``/``start --respawn`` and the ``Daemon`` app
runner use::

    code = Supervisor(["myserver", "--port", "8080"], respawn="on-failure",
                      backoff=(0.1, 30.0), max_restarts=5, within=60.0).run()

* **Respawn.** ``respawn="on-failure"`` restarts the program when it exits
  with a status other than 0 or is killed by a signal; ``"always"`` also
  after a clean exit; ``"no"`` never. The delay before a restart starts at
  ``backoff[0]`` seconds and doubles after each failed run, up to
  ``backoff[1]``; a run counts as healthy (and resets the delay) once the
  program reported ``READY=1`` (``notify=True``) or, without notify, once it
  stayed up for ``within`` seconds.
* **Start limit.** With ``max_restarts=N``, more than N restarts within
  ``within`` seconds end supervision ("giving up"), like systemd's
  ``StartLimitBurst=``/``StartLimitIntervalSec=``.
* **Signals.** SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGQUIT and SIGWINCH
  are forwarded to the program (to its whole process group with
  ``process_group=True``). SIGTERM, SIGINT and SIGQUIT also end supervision:
  the program is not restarted, and :meth:`Supervisor.run` returns its status.
* **PID 1 duty** (``init=True``, automatic when this process is PID 1): every
  orphan the program leaves behind is adopted (``PR_SET_CHILD_SUBREAPER``
  when not PID 1) and reaped, so no zombie piles up in a container.
* **Readiness.** With ``notify=True`` the program gets its own
  ``$NOTIFY_SOCKET``; its ``READY=1``, ``STATUS=``, ``RELOADING=1`` and
  watchdog pings are passed on to this process's service manager (or to the
  ``daemonkit start`` launcher that waits), and the supervisor says
  ``STOPPING=1`` itself when told to stop. A program that is not ready
  within ``ready_timeout`` seconds is stopped and counts as a failed start.

The return value is the program's exit status (128+N when signal N killed
it), the convention of shells, tini and dumb-init.
"""

from __future__ import annotations

import math
import os
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from . import _posix, readiness
from ._activation import activated_count, handed_down_environment
from .errors import ConfigurationError

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from typing import Any

__all__ = ["FORWARDED", "POLICIES", "Supervisor", "exit_code"]

FORWARDED: tuple[int, ...] = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGQUIT,
    signal.SIGWINCH,
)
ENDING = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
POLICIES = ("no", "on-failure", "always")
PROCESS_NAME = _posix.SUPERVISOR_NAME  # /proc/PID/comm: how ``status`` knows a supervisor
# What the program says that its supervisor passes on to its own service
# manager. Not STOPPING=1: the program stopping is not the service stopping
# (the supervisor says STOPPING=1 itself when it is told to stop).
RELAYED = (
    "READY=",
    "RELOADING=",
    "STATUS=",
    "ERRNO=",
    "MONOTONIC_USEC=",
    "WATCHDOG=",
    "EXTEND_TIMEOUT_USEC=",
)
KILL_AFTER = 5.0  # a program not ready in time gets SIGTERM, then SIGKILL after this


def exit_code(wait_status: int) -> int:
    """A wait status as a shell shows it: the exit status, or 128+N for signal N."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


def exit_status_of(function: Callable[[], object]) -> int:
    """Call ``function`` and give the status a process running it would exit
    with: an int it returns (else 0), ``SystemExit``'s code, or 1 with the
    traceback on stderr for any other exception."""
    try:
        result = function()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        return 1
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def _check_seconds(value: object, what: str, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{what} must be a number of seconds, not {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(
            f"{what} must be a finite number of seconds {bound}, not {value!r}"
        )
    return seconds


def _check_strings(command: Sequence[str], env: Mapping[str, str] | None) -> None:
    """Refuse now what exec would refuse in the child, where no one would hear why."""
    for word in command:
        if "\0" in word:
            raise ConfigurationError(f"Supervisor: the command word {word!r} contains a NUL byte")
    for key, value in (env or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigurationError(
                f"Supervisor: env must map strings to strings, not {key!r}: {value!r}"
            )
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ConfigurationError(f"Supervisor: {key!r}={value!r} is not a valid variable")


class _Run:
    """One run of the program: its pid, when it started, and what it said."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.began = time.monotonic()
        self.ready = False
        self.status: int | None = None  # the wait status, once reaped
        self.killed_for_timeout = False


class Supervisor:
    """Run a program (a command, or a callable in a forked child) and keep it running.

    See the module documentation for the policies. ``target`` is a command
    line (``["prog", "arg"]``, looked up in ``$PATH`` unless ``executable``
    is given) or a callable run in a forked child, whose return value (or
    ``SystemExit`` code) is the child's exit status. ``env`` is the
    program's environment (default: this process's). ``say`` receives one
    line per decision (default: printed to stderr).
    """

    __module__ = "daemonkit"

    def __init__(
        self,
        target: Sequence[str] | Callable[[], object],
        *,
        respawn: str = "no",
        backoff: tuple[float, float] = (0.1, 30.0),
        max_restarts: int | None = None,
        within: float = 10.0,
        init: bool | None = None,
        process_group: bool = False,
        notify: bool = False,
        ready_timeout: float = 90.0,
        grace: float = 0.2,
        env: Mapping[str, str] | None = None,
        executable: str | None = None,
        name: str | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        if callable(target):
            self.command: list[str] | None = None
            self.function: Callable[[], object] | None = target
            default_name = getattr(target, "__name__", "program")
        else:
            if isinstance(target, (str, bytes)) or not all(isinstance(a, str) for a in target):
                raise ConfigurationError(
                    f"Supervisor: the command must be a list of strings, not {target!r}"
                )
            self.command = list(target)
            self.function = None
            if not self.command or not self.command[0]:
                raise ConfigurationError("Supervisor: no command given")
            default_name = os.path.basename(self.command[0])
        if respawn not in POLICIES:
            raise ConfigurationError(
                f"respawn={respawn!r}: expected one of {', '.join(map(repr, POLICIES))}"
            )
        try:
            low, high = backoff
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"backoff={backoff!r}: expected (LOW, HIGH) seconds, such as (0.1, 30)"
            ) from None
        low = _check_seconds(low, "backoff's low bound")
        high = _check_seconds(high, "backoff's high bound")
        if high < low:
            raise ConfigurationError(f"backoff={backoff!r}: the high bound is below the low one")
        if max_restarts is not None and (
            isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0
        ):
            raise ConfigurationError(f"max_restarts={max_restarts!r}: expected an integer >= 0")
        self.respawn = respawn
        self.backoff = (low, high)
        self.max_restarts = max_restarts
        self.within = _check_seconds(within, "within", allow_zero=False)
        self.init = init
        self.process_group = bool(process_group)
        self.notify = bool(notify)
        self.ready_timeout = _check_seconds(ready_timeout, "ready_timeout", allow_zero=False)
        self.grace = _check_seconds(grace, "grace")
        self.env = dict(env) if env is not None else None
        self.executable = executable
        self.name = name or default_name
        self._say = say
        _check_strings(self.command or [], self.env)
        # Now, not when first needed: after a chroot they could not be imported.
        _posix.load_libc()
        from . import notify as _notify_module  # noqa: F401

        self.child: int | None = None  # the program's pid while it runs
        self.starts = 0
        self._pending: list[int] = []
        self._wake = (-1, -1)
        self._receiver: Any = None
        self._announced = False
        self._own_name: str | None = None
        self._handed_down: dict[str, str] = {}  # variables naming the program's own pid

    # -- what the program sees -----------------------------------------------------

    def _handed_down_variables(self) -> dict[str, str]:
        """Variables that name this process and must name the program instead
        (decided here, in the supervisor: in the child its pid has changed)."""
        names = []
        if activated_count():  # sockets systemd passed to us are the program's now
            names.append("LISTEN_PID")
        if os.environ.get("WATCHDOG_PID") == str(os.getpid()):  # its pings are relayed
            names.append("WATCHDOG_PID")
        return dict.fromkeys(names, "")

    def _child_variables(self) -> dict[str, str]:
        """In the child: what to set in the program's environment."""
        variables = {name: str(os.getpid()) for name in self._handed_down}
        if self._receiver is not None:
            variables.update(self._receiver.environment())
        return variables

    def _environment(self) -> dict[str, str]:
        """The program's environment, built in the child (it names the child's pid)."""
        environment = dict(self.env if self.env is not None else os.environ)
        environment.pop("NOTIFY_SOCKET", None)
        environment.update(self._child_variables())
        # A program that uses DaemonContext must stay in the foreground here.
        environment.update(handed_down_environment(os.getpid(), None))
        return environment

    def _leave_supervisor_state(self) -> None:
        """In a child: drop what is the supervisor's (its name, its descriptors)."""
        if self._own_name:
            _posix.set_process_name(self._own_name)
        for fd in self._wake:
            os.close(fd)
        if self._receiver is not None:
            os.close(self._receiver.fileno())  # the address stays bound in the supervisor

    def _executable(self) -> str:
        assert self.command is not None
        if self.executable is not None:
            return self.executable
        import shutil

        path = (self.env if self.env is not None else os.environ).get("PATH", os.defpath)
        found = shutil.which(self.command[0], path=path)
        if found is None:
            raise FileNotFoundError(2, "command not found", self.command[0])
        return found

    def _in_child(self, handlers: dict[int, Any], wakeup: int) -> Callable[[], int]:
        """What a forked child of a callable target runs: the target, with the
        signal handlers it had before supervision, and its exit status."""
        function = self.function
        assert function is not None

        def child() -> int:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            _posix.set_wakeup_fd(wakeup)
            self._leave_supervisor_state()
            os.environ.pop("NOTIFY_SOCKET", None)
            os.environ.update(self._child_variables())
            _posix.set_signal_mask(())
            code = exit_status_of(function)
            _posix.flush_standard_streams()
            return code

        return child

    # -- the loop ------------------------------------------------------------------

    def say(self, text: str) -> None:
        """Report a decision (restart, give up, forward) on one line."""
        if self._say is not None:
            self._say(text)
            return
        try:
            print(f"daemonkit: {self.name}: {text}", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass

    def run(self) -> int:
        """Supervise until the program ends for good; its exit status (128+N for signal N)."""
        if threading.current_thread() is not threading.main_thread():
            raise ConfigurationError("Supervisor.run() must be called from the main thread")
        init = self.init if self.init is not None else os.getpid() == 1
        was_subreaper = _posix.is_subreaper()
        if init and not was_subreaper and not _posix.set_subreaper(True):
            self.say("warning: cannot become a subreaper; orphans go to init")
        watched = (*FORWARDED, signal.SIGCHLD)
        self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        handlers = {signum: signal.getsignal(signum) for signum in watched}
        wakeup = _posix.set_wakeup_fd(self._wake[1])
        for signum in watched:
            signal.signal(signum, self._note)
        previous_mask = _posix.block_signals(())
        _posix.set_signal_mask(previous_mask - set(watched))
        self._own_name = _posix.process_name(os.getpid())
        _posix.set_process_name(PROCESS_NAME)  # how ``status`` tells a supervisor
        self._handed_down = self._handed_down_variables()
        if self.notify or "WATCHDOG_PID" in self._handed_down:  # readiness, or watchdog pings
            from .notify import NotifySocketReceiver

            self._receiver = NotifySocketReceiver()
        try:
            return self._supervise(init, handlers, wakeup)
        finally:
            if self.child is not None:  # run() itself failed: leave nothing running
                _posix.kill_and_reap(self.child)
                self.child = None
            if init and not was_subreaper:
                _posix.set_subreaper(False)
            if self._own_name:
                _posix.set_process_name(self._own_name)
            _posix.set_wakeup_fd(wakeup)
            for signum, handler in handlers.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
            _posix.set_signal_mask(previous_mask)
            for fd in self._wake:
                os.close(fd)
            self._wake = (-1, -1)
            if self._receiver is not None:
                self._receiver.close()
                self._receiver = None

    def _note(self, signum: int, frame: object) -> None:
        self._pending.append(signum)

    def _supervise(self, init: bool, handlers: dict[int, Any], wakeup: int) -> int:
        restarts: deque[float] = deque()
        delay = self.backoff[0]
        launcher_waits = readiness.pending()
        while True:
            outcome = self._one_run(init, handlers, wakeup, launcher_waits)
            if isinstance(outcome, int):
                return outcome  # ended for good: this is the exit status
            status_code, healthy = outcome
            if healthy:
                delay = self.backoff[0]
            now = time.monotonic()
            restarts.append(now)
            while restarts and restarts[0] <= now - self.within:
                restarts.popleft()
            if self.max_restarts is not None and len(restarts) > self.max_restarts:
                ended = len(restarts)  # each end would be one restart more
                self.say(
                    f"giving up: it ended {ended} times within {self.within:g} s "
                    f"(at most {self.max_restarts} restarts allowed)"
                )
                self._tell_manager([f"STATUS=gave up after it ended {ended} times"])
                return status_code if status_code != 0 else 1
            self.say(f"restarting in {delay:g} s")
            self._tell_manager([f"STATUS=restarting in {delay:g} s"])
            ending = self._pause(delay, init)
            if ending is not None:
                return 128 + ending
            delay = min(delay * 2 if delay else 0.1, self.backoff[1])  # from 0: 0.1 s

    def _one_run(
        self, init: bool, handlers: dict[int, Any], wakeup: int, launcher_waits: bool
    ) -> int | tuple[int, bool]:
        """Start the program and see it end: the final exit status, or, if it
        is to be restarted, ``(its status, whether the run was healthy)``."""
        had_terminal = self.process_group and self._has_terminal()
        try:
            run = self._start(handlers, wakeup)
        except OSError as exc:
            what = self.command[0] if self.command else self.name
            message = f"cannot execute {what}: {exc.strerror}"
            if had_terminal:
                _posix.restore_terminal()  # the child may have taken it before exec failed
            if self.starts == 0:
                self._fail_start(message)
                return 127 if exc.errno == 2 else 126
            self.say(message)
            return 127, False
        ending = self._watch(run, init, launcher_waits and not self._announced)
        if had_terminal:
            _posix.restore_terminal()
        assert run.status is not None
        status_code = exit_code(run.status)
        described = _posix.describe_wait_status(run.status)
        if ending is not None:
            return status_code
        late = f" (not ready after {self.ready_timeout:g} s)" if run.killed_for_timeout else ""
        if run.killed_for_timeout and status_code == 0:
            status_code = 1  # stopped for not being ready: a failure, however it exited
        if launcher_waits and not self._announced:
            self._fail_start(f"{self.name} {described} before it was ready{late}")
            return 1
        if not self._restarts_after(status_code):
            if self.respawn != "no":
                self.say(f"{described}; not restarting (respawn={self.respawn})")
            return status_code
        self.say(f"{described}{late}")
        healthy = run.ready if self.notify else time.monotonic() - run.began >= self.within
        return status_code, healthy

    def _restarts_after(self, code: int) -> bool:
        return self.respawn == "always" or (self.respawn == "on-failure" and code != 0)

    def _start(self, handlers: dict[int, Any], wakeup: int) -> _Run:
        if self.function is not None:
            in_child = self._in_child(handlers, wakeup)
        else:
            in_child = self._exec_in_child(self._executable())
        pid = _posix.spawn(in_child, new_group=self.process_group, execs=self.command is not None)
        self.starts += 1
        self.child = pid
        return _Run(pid)

    def _exec_in_child(self, executable: str) -> Callable[[], int]:
        assert self.command is not None
        command = self.command

        def child() -> int:
            _posix.set_wakeup_fd(-1)
            self._leave_supervisor_state()
            for signum in signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}:
                try:
                    signal.signal(signum, signal.SIG_DFL)
                except (OSError, ValueError):
                    pass
            environment = self._environment()
            _posix.set_signal_mask(())
            os.execve(executable, command, environment)
            return 127  # not reached

        return child

    def _has_terminal(self) -> bool:
        try:
            return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
        except OSError:
            return False

    def _wait(self, timeout: float | None) -> list[int]:
        """Sleep until a signal or a notify message (or ``timeout``); the signals."""
        watched = [self._wake[0]]
        if self._receiver is not None:
            watched.append(self._receiver.fileno())
        if not self._pending:
            try:
                select.select(watched, [], [], timeout)
            except InterruptedError:
                pass
        _posix.drain(self._wake[0])
        arrived, self._pending = self._pending, []  # a handler running now appends to ``arrived``
        return arrived

    def _reap(self, init: bool, run: _Run | None) -> None:
        """Collect exited children: the program's status, and any orphan's."""
        if not init and (run is None or run.status is not None):
            return  # only the program is ours to reap
        while True:
            try:
                pid, status = os.waitpid(-1 if init else run.pid, os.WNOHANG)  # type: ignore[union-attr]
            except ChildProcessError:
                return
            if pid == 0:
                return
            if run is not None and pid == run.pid:
                run.status = status
                self.child = None
                if not init:
                    return

    def _forward(self, run: _Run, signum: int) -> None:
        try:
            if self.process_group:
                os.killpg(run.pid, signum)
            else:
                os.kill(run.pid, signum)
        except ProcessLookupError:
            pass

    def _watch(self, run: _Run, init: bool, first: bool) -> int | None:
        """Wait for the program to exit; the ending signal that came meanwhile, if any."""
        ending: int | None = None
        grace_until = run.began + self.grace
        ready_until = run.began + self.ready_timeout
        kill_at: float | None = None
        while True:
            self._reap(init, run)
            self._hear(run, first)  # after reaping: a dying program's last words too
            if run.status is not None:
                return ending
            now = time.monotonic()
            if not self.notify and not run.ready and now >= grace_until:
                run.ready = True
                self._announce(first)
            if self.notify and not run.ready and ending is None and now >= ready_until:
                if kill_at is None:
                    self.say(f"not ready after {self.ready_timeout:g} s; stopping it")
                    run.killed_for_timeout = True
                    self._forward(run, signal.SIGTERM)
                    kill_at = now + KILL_AFTER
                elif now >= kill_at:
                    self._forward(run, signal.SIGKILL)
                    kill_at = math.inf
            deadlines = [kill_at] if kill_at is not None else []
            if not run.ready and kill_at is None and not (self.notify and ending is not None):
                deadlines.append(ready_until if self.notify else grace_until)
            timeout = max(0.0, min(deadlines) - now) if deadlines else None
            if timeout == math.inf:
                timeout = None
            for signum in self._wait(timeout):
                if signum == signal.SIGCHLD:
                    continue
                self._forward(run, signum)
                if signum in ENDING and ending is None:
                    ending = signum
                    self._tell_manager(["STOPPING=1"])

    def _hear(self, run: _Run, first: bool) -> None:
        """Read what the program (or its descendants) sent to its $NOTIFY_SOCKET."""
        if self._receiver is None:
            return
        for sender, text in self._receiver.receive_nowait():
            if sender is None or not _posix.descends_from(sender, run.pid):
                continue
            lines = text.splitlines()
            if "READY=1" in lines and not run.ready:
                run.ready = True
                self._announce(first, [line for line in lines if line != "READY=1"])
            else:
                self._tell_manager([line for line in lines if line.startswith(RELAYED)])

    def _pause(self, seconds: float, init: bool) -> int | None:
        """Wait out a backoff delay; an ending signal cuts it short (returned)."""
        until = time.monotonic() + seconds
        while True:
            if init:
                self._reap(init, None)
            remaining = until - time.monotonic()
            if remaining <= 0:
                return None
            for signum in self._wait(remaining):
                if signum in ENDING:
                    self.say(f"{_posix.signal_name(signum)} received; not restarting")
                    return signum
            if self._receiver is not None:
                self._receiver.receive_nowait()  # a leftover's late words: dropped

    # -- telling the service manager and the launcher ------------------------------

    def _announce(self, first: bool, lines: Sequence[str] = ()) -> None:
        """The program is up (again): READY=1 upstream, and release a waiting launcher."""
        status = [line for line in lines if line.startswith("STATUS=")]
        self._tell_manager(["READY=1", *[line for line in lines if line.startswith(RELAYED)]])
        if not self._announced:
            self._announced = True
            if first:
                text = status[-1].partition("=")[2] if status else None
                readiness.ready_launcher(text)

    def _tell_manager(self, lines: Sequence[str]) -> None:
        """Send sd_notify lines to this process's own service manager, if any.

        Never blocking, never failing: a manager that does not read (or a
        process squatting on the address) must not stall supervision, and
        nobody listening (``reload --notify`` listens only while it runs) is
        normal. What cannot be sent at once is dropped.
        """
        if not lines or not os.environ.get("NOTIFY_SOCKET"):
            return
        from .notify import NotifyError, notify_socket_address

        try:
            address = notify_socket_address()
            flags = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            with socket.socket(socket.AF_UNIX, flags) as sock:
                sock.sendto("\n".join(lines).encode() + b"\n", address)  # type: ignore[arg-type]
        except (OSError, NotifyError):
            pass

    def _fail_start(self, message: str) -> None:
        """The first start failed: tell the waiting launcher (or stderr)."""
        if readiness.pending():
            readiness.report_text(message)
        else:
            self.say(message)


def supervise(target: Sequence[str] | Callable[[], object], **options: Any) -> int:
    """``Supervisor(target, **options).run()``: see :class:`Supervisor`."""
    return Supervisor(target, **options).run()
