"""Finding the daemon a launcher left behind, and making it a :class:`DaemonHandle`.

Part of the pytest plugin (see :mod:`daemonkit.testing`). Every way of
starting a daemon ends the same: a launcher (``daemonkit start``, a program
that detaches by itself, a forked ``DaemonContext``) exits, and the daemon
it left must be found (by its pidfile, or as the one new orphan in a
session of its own), waited for until it is the test process's child, and
tracked, so that teardown reaps it. :class:`Adopter` does that for a
:class:`~daemonkit.testing.DaemonRunner`.
"""

from __future__ import annotations

import os
import time

from ._testing_errors import DaemonExitedError, DaemonStartError, read_text
from ._testing_handle import DaemonHandle
from ._testing_reaper import running

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from pathlib import Path

    from ._testing_notify import NotifyRecorder
    from ._testing_reaper import ChildReaper

ADOPTION_WAIT = 5.0  # seconds for a launched daemon to be re-parented to the test


class Adopter:
    """Adopts daemons for a runner: each becomes a handle appended to ``daemons``.

    ``daemons`` is the runner's own list (:attr:`DaemonRunner.daemons`): a
    handle is in it from the moment it exists, so teardown reaps it even if
    the start fails after (no ``READY=1``). ``reaper`` tells the test
    process's children.
    """

    def __init__(self, reaper: ChildReaper, daemons: list[DaemonHandle]) -> None:
        self._reaper = reaper
        self._daemons = daemons

    def launch(
        self,
        argv: list[str],
        name: str,
        pidfile: Path | None,
        log_path: Path | None,
        recorder: NotifyRecorder | None,
        environment: dict[str, str],
        timeout: float,
        out_path: Path,
        err_path: Path,
    ) -> DaemonHandle:
        """Run a launcher process to its end; adopt the daemon it left.

        The launcher's stdout and stderr go to ``out_path`` and ``err_path``.
        """
        import subprocess

        before = set(self._reaper.children())
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
                launcher_stderr=read_text(err_path),
                log=read_text(log_path),
            ) from None
        if code != 0:
            raise DaemonStartError(
                f"{name} did not start: {argv[0]} exited with status {code}",
                launcher_exit_code=code,
                launcher_stderr=read_text(err_path),
                log=read_text(log_path),
            )
        if pidfile is not None:
            pid = self.pid_from_pidfile(pidfile, deadline)
        else:
            pid = self.orphan(before | {process.pid}, deadline)
        if pid is None:
            where = f"{pidfile} names no live daemon" if pidfile else "no daemon was left"
            raise DaemonStartError(
                f"{name}: the launcher exited 0, but {where} (did it exit at once?)",
                launcher_exit_code=0,
                launcher_stderr=read_text(err_path),
                log=read_text(log_path),
            )
        return self.adopt(
            pid,
            name,
            pidfile,
            log_path,
            code,
            read_text(out_path),
            read_text(err_path),
            recorder,
            deadline,
        )

    @staticmethod
    def pid_from_pidfile(pidfile: Path, deadline: float) -> int | None:
        """The pid of the daemon that holds ``pidfile``, once it is past starting;
        None if none runs then (or still none at ``deadline``)."""
        from .pidfile import PIDFile, PIDStatus

        while True:
            found = PIDFile(str(pidfile)).holder()
            if found.state != PIDStatus.STARTING or time.monotonic() >= deadline:
                return found.pid if found.state == PIDStatus.RUNNING else None
            time.sleep(0.005)

    def orphan(self, known: set[int], deadline: float) -> int | None:
        """The daemon a launcher left: the new child of ours in a session of its own.

        The double fork's intermediate process, a session leader, is
        adopted too, for the moment until it exits: it is not the daemon.
        """
        ours = os.getsid(0)
        tracked = {handle.pid for handle in self._daemons}
        began = time.monotonic()
        until = min(deadline, began + ADOPTION_WAIT)
        while True:
            leaders: list[int] = []
            others: list[int] = []
            for pid in self._reaper.children():
                if pid in known or pid in tracked or not running(pid):
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

    def adopt(
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
                log=read_text(log_path),
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
                log=read_text(log_path),
            ) from None
        self._daemons.append(handle)
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
