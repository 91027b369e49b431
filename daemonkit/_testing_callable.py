"""Running a Python function as a real daemon, for :meth:`DaemonRunner.start_callable`.

Part of the pytest plugin (see :mod:`daemonkit.testing`). A forked copy of
the test process is the launcher (:func:`be_launcher`): it enters the
:class:`~daemonkit.DaemonContext`, and the daemon it becomes writes its pid
on a pipe, runs the function and exits with its status. In the test,
:func:`finish_callable` waits for the launcher's verdict and the pid, and
adopts the daemon. Nothing returns into the test's code in the forked
processes.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path  # loaded by pytest already

from ._testing_errors import DaemonStartError, describe_exit, read_text
from .supervise import exit_status_of  # now: the daemon may chroot before it calls it

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

    from ._testing_adopt import Adopter
    from ._testing_handle import DaemonHandle
    from ._testing_notify import NotifyRecorder


def finish_callable(
    adopter: Adopter,
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
    """In the test: the forked launcher's verdict, then the daemon's pid from the pipe
    ``report``; the daemon, adopted by ``adopter``.

    Without detaching (``detach_process=False``) the forked process is the
    daemon itself: its pid comes once it entered the context.
    """
    from ._posix import exits_within

    deadline = time.monotonic() + timeout + 10.0
    pidfile_path = Path(pidfile.path) if isinstance(getattr(pidfile, "path", None), str) else None
    if not detached:
        pid = read_pid(report, deadline)
        if pid is None:
            if not exits_within(launcher, 1.0):
                os.kill(launcher, signal.SIGKILL)
            status = os.waitstatus_to_exitcode(os.waitpid(launcher, 0)[1])
            raise DaemonStartError(
                f"{name} {describe_exit(status)} before it entered its DaemonContext",
                launcher_stderr=read_text(err_path),
                log=read_text(log_path),
                exit_status=status,
            )
        return adopter.adopt(pid, name, pidfile_path, log_path, None, "", "", recorder, deadline)
    if not exits_within(launcher, timeout + 10.0):
        os.kill(launcher, signal.SIGKILL)
        raise DaemonStartError(
            f"the launcher of {name} did not exit within {timeout + 10:g} s",
            launcher_stderr=read_text(err_path),
            log=read_text(log_path),
        )
    code = os.waitstatus_to_exitcode(os.waitpid(launcher, 0)[1])
    if code != 0:
        raise DaemonStartError(
            f"{name} did not start: its launcher exited with status {code}",
            launcher_exit_code=code,
            launcher_stderr=read_text(err_path),
            log=read_text(log_path),
        )
    pid = read_pid(report, deadline)
    if pid is None:
        raise DaemonStartError(
            f"{name}: the launcher exited 0, but the daemon never reported its pid",
            launcher_exit_code=0,
            launcher_stderr=read_text(err_path),
            log=read_text(log_path),
        )
    return adopter.adopt(
        pid,
        name,
        pidfile_path,
        log_path,
        0,
        read_text(out_path),
        read_text(err_path),
        recorder,
        deadline,
    )


def read_pid(fd: int, deadline: float) -> int | None:
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


def be_launcher(
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

        def body() -> object:
            with context:
                return function()

        code = exit_status_of(body)
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
