"""Shared fixtures: run real daemon scripts, read their reports, clean up by PID."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

TESTS_DIR = Path(__file__).resolve().parent
PROJECT_DIR = TESTS_DIR.parent

SCRIPT_PRELUDE = f"""\
import json, os, signal, sys, time
sys.path.insert(0, {str(TESTS_DIR)!r})
import facts
import daemonkit
REPORT = sys.argv[1]


def linger(seconds=30.0):
    # Short sleeps: a signal that lands just before one long sleep starts
    # would only be handled when it ends.
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
"""


# Variables a service manager may have put into the test runner's own
# environment: never let them leak into the children under test.
MANAGER_VARIABLES = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without service-manager variables, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if key not in MANAGER_VARIABLES}
    env.update(extra)
    return env


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def is_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """Wait until ``pid`` has exited (it need not be our child)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while is_alive(pid):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            poller.poll(min(remaining, 0.05) * 1000)
        return True
    finally:
        os.close(pidfd)


def read_json(path: Path, timeout: float = 10.0) -> dict[str, Any]:
    """Wait for a JSON file (without tracking any pid it names)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"no report at {path} within {timeout} s")
        time.sleep(0.01)
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@dataclass
class Launch:
    """How a launcher process ended."""

    returncode: int
    stdout: str
    stderr: str
    elapsed: float


class Daemons:
    """Starts daemon scripts and kills, by PID, every process they left."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.tracked: list[tuple[int, int | None]] = []
        self.count = 0

    def track(self, pid: int) -> None:
        """Remember ``pid`` (with its start time, so a reused pid is spared)."""
        self.tracked.append((pid, start_time(pid)))

    def script(self, body: str) -> Path:
        """Write a daemon script: the prelude, then ``body`` (dedented)."""
        self.count += 1
        path = self.tmp_path / f"daemon_{self.count}.py"
        path.write_text(SCRIPT_PRELUDE + textwrap.dedent(body))
        return path

    def script_command(self, body: str) -> tuple[list[str], Path]:
        """The command that runs ``body`` as a daemon script (arguments may be
        appended), and where its report will be."""
        script = self.script(body)
        return [sys.executable, str(script), str(self.report_path())], self.report_path()

    def launcher_and_daemon(
        self, launch: Launch, report: Path
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The launcher's facts (``REPORT.launcher``) and the with body's; pids tracked."""
        launcher = read_json(Path(f"{report}.launcher"))
        self.track(launcher["pid"])
        try:
            body = self.read_report(report)
        except pytest.fail.Exception:
            pytest.fail(f"no report; the launcher exited {launch.returncode}: {launch.stderr!r}")
        return launcher, body

    def report_path(self) -> Path:
        return self.tmp_path / f"report_{self.count}.json"

    def run(
        self,
        command: list[str],
        *,
        timeout: float = 30.0,
        stdin: Any = subprocess.DEVNULL,
        env: dict[str, str] | None = None,
        preexec_fn: Any = None,
        pass_fds: tuple[int, ...] = (),
    ) -> Launch:
        """Run ``command`` (tracked for cleanup) to its end; return how it ended."""
        began = time.monotonic()
        proc = subprocess.Popen(
            command,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=self.tmp_path,
            preexec_fn=preexec_fn,
            pass_fds=pass_fds,
            text=True,
        )
        self.track(proc.pid)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"{command[0]} did not exit within {timeout} s; stderr: {err}")
        return Launch(proc.returncode, out, err, time.monotonic() - began)

    def launch(
        self,
        body: str,
        *,
        timeout: float = 30.0,
        stdin: Any = subprocess.DEVNULL,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        preexec_fn: Any = None,
        pass_fds: tuple[int, ...] = (),
    ) -> tuple[Launch, Path]:
        """Run a daemon script as a launcher process; return how it ended."""
        script = self.script(body)
        report = self.report_path()
        command = [sys.executable, str(script), str(report), *(args or [])]
        launch = self.run(
            command,
            timeout=timeout,
            stdin=stdin,
            env=env,
            preexec_fn=preexec_fn,
            pass_fds=pass_fds,
        )
        return launch, report

    def read_report(self, path: Path, timeout: float = 10.0) -> dict[str, Any]:
        """Wait for the daemon's report file and track the daemon's pid."""
        data = read_json(path, timeout)
        self.track(data["pid"])
        return data

    def kill_all(self) -> None:
        for pid, started in reversed(self.tracked):
            if started is None or start_time(pid) != started or not is_alive(pid):
                continue
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            try:
                if start_time(pid) == started:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            finally:
                os.close(pidfd)
            wait_gone(pid, 5.0)
        self.tracked.clear()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    """Start daemon scripts; every process they started is killed by PID after."""
    tracker = Daemons(tmp_path)
    try:
        yield tracker
    finally:
        tracker.kill_all()


def daemon_facts(daemons: Daemons, launch: Launch, report: Path) -> dict[str, Any]:
    """The daemon's report (its pid is tracked for cleanup), or a clear failure."""
    try:
        return daemons.read_report(report)
    except pytest.fail.Exception:
        pytest.fail(
            f"no daemon report; the launcher exited {launch.returncode}, stderr: {launch.stderr!r}"
        )


def _scratch_dir(prefix: str, mode: int | None = None) -> Iterator[Path]:
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if mode is not None:
        folder.chmod(mode)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory any user may write, sticky as /tmp is (tmp_path's parents are root-only)."""
    yield from _scratch_dir("daemonkit-test-", 0o1777)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can reach but not write (tmp_path's parents are root-only)."""
    yield from _scratch_dir("daemonkit-shared-", 0o755)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (a socket path is limited to 107 bytes)."""
    yield from _scratch_dir("dk-")


@pytest.fixture
def systemd_python(tmp_path: Path) -> list[str]:
    """A Python interpreter whose process name (comm) is ``systemd``.

    ``comm`` is the name of the executed file, so a copy of the interpreter
    named ``systemd`` is, to the kernel, a process called systemd: a
    stand-in service manager for the "started by systemd" decisions.
    """
    import shutil

    copy = tmp_path / "bin" / "systemd"
    copy.parent.mkdir()
    shutil.copy2(os.path.realpath(sys.executable), copy)
    detail = ""
    for prefix in ([], ["env", f"PYTHONHOME={sys.base_prefix}"]):
        check = subprocess.run(
            [*prefix, str(copy), "-c", "print(open('/proc/self/comm').read().strip())"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if check.returncode == 0 and check.stdout.strip() == "systemd":
            return [*prefix, str(copy)]
        detail = check.stderr.strip()[-300:]
    pytest.skip(f"a copy of {sys.executable} does not run: {detail}")


def wait_until(condition: Any, timeout: float = 5.0) -> bool:
    """Poll ``condition()`` until it is true; False if ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def read_text(path: Path) -> str:
    """The text of ``path``; empty if it does not exist (yet)."""
    return path.read_text() if path.exists() else ""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def read_line(sock: Any) -> bytes:
    """Bytes from a socket up to and including a newline (or until it closes)."""
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


def stop(pid: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    """Signal ``pid`` and wait for it to be gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    return wait_gone(pid, timeout)


# A subreaper: runs the launcher, then reaps every orphan (the daemon), so a
# daemon's real exit status, which only its parent can learn, is known. It
# also notes when the launcher's exit was seen, on the monotonic clock.
SUBREAPER = """\
import ctypes, json, os, subprocess, sys, time
PR_SET_CHILD_SUBREAPER = 36
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    sys.exit(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")
result = sys.argv[1]
launcher = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL)
statuses = {"launcher": launcher.wait()}
launcher_ended = time.monotonic()
while True:  # every orphaned descendant (the daemon) is ours to reap
    try:
        pid, status = os.wait()
    except ChildProcessError:
        break
    statuses[str(pid)] = os.waitstatus_to_exitcode(status)
with open(result + ".tmp", "w") as out:
    json.dump({"statuses": statuses, "launcher_ended": launcher_ended}, out)
os.rename(result + ".tmp", result)
"""


def parent_of(pid: int) -> int | None:
    """The parent pid of ``pid``, None once it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[1])


class Supervised:
    """A daemon script's launcher, run under a subreaper that records every exit status."""

    def __init__(
        self, daemons: Daemons, tmp_path: Path, body: str, args: list[str] | None = None
    ) -> None:
        script = daemons.script(body)
        self.report = daemons.report_path()
        self.result = tmp_path / f"statuses_{daemons.count}.json"
        reaper = tmp_path / "subreaper.py"
        reaper.write_text(SUBREAPER)
        self.stderr = tmp_path / f"stderr_{daemons.count}.txt"
        command = [sys.executable, str(script), str(self.report), *(args or [])]
        with open(self.stderr, "w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(reaper), str(self.result), *command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=tmp_path,
            )
        daemons.track(self.proc.pid)
        self.daemons = daemons

    def diagnostics(self) -> str:
        """The launcher's stderr and the daemon's log (REPORT.log), for failure messages."""
        log = Path(f"{self.report}.log")
        text = log.read_text() if log.exists() else ""
        return f"{self.stderr.read_text()!r}, daemon log: {text!r}"

    def read_report(self) -> dict[str, Any]:
        """The daemon's report, once the subreaper has adopted the daemon.

        Until the launcher has left, the double fork's intermediate process
        is the daemon's parent, and would reap it (its status unseen here)
        if a signal ended it now. The launcher's and the daemon's pids are
        tracked.
        """
        try:
            data = self.daemons.read_report(self.report)
        except pytest.fail.Exception:
            pytest.fail(f"no daemon report; stderr: {self.diagnostics()}")
        finally:
            launcher = Path(f"{self.report}.launcher")
            if launcher.exists():  # written before open(): the launcher's own pid
                self.daemons.track(json.loads(launcher.read_text())["pid"])
        deadline = time.monotonic() + 10
        while parent_of(data["pid"]) not in (self.proc.pid, None):
            if time.monotonic() > deadline:
                pytest.fail(f"the subreaper did not adopt daemon {data['pid']}")
            time.sleep(0.005)
        return data

    def finish(self, daemon_pid: int, timeout: float = 10.0) -> tuple[dict[str, int], float]:
        """Exit statuses of the launcher and the daemon once all are gone, and
        when the launcher's exit was seen (monotonic clock).

        The intermediate process of the double fork, reaped here too once the
        launcher has left, must have exited 0; it is left out of the result.
        """
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail("the subreaper did not finish: some descendant is still running")
        assert self.proc.returncode == 0, self.diagnostics()
        data = json.loads(self.result.read_text())
        statuses: dict[str, int] = data["statuses"]
        ours = {"launcher", str(daemon_pid)}
        others = {pid: status for pid, status in statuses.items() if pid not in ours}
        assert len(others) <= 1 and set(others.values()) <= {0}, statuses
        mine = {pid: status for pid, status in statuses.items() if pid in ours}
        return mine, float(data["launcher_ended"])

    def statuses(self, daemon_pid: int, timeout: float = 10.0) -> dict[str, int]:
        """Exit statuses of the launcher and the daemon, once all are gone."""
        return self.finish(daemon_pid, timeout)[0]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount small tmpfs file systems (as root); unmounted after the test."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        where = tmp_path / f"mnt{len(mounted)}"
        where.mkdir()
        try:
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                check=True,
                capture_output=True,
                text=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"cannot mount a tmpfs here: {getattr(exc, 'stderr', exc)}")
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in reversed(mounted):
            if subprocess.run(["umount", str(where)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(where)], capture_output=True)
