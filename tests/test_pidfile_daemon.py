"""daemonkit's PIDFile wired into DaemonContext, with real daemons.

The lock is taken in the launcher before any fork (so "already running" is
decided there, before anything happens), handed down to the daemon, which
writes its own pid before chroot and the privilege drop, and the file is
removed (or, without the right to, emptied) when the daemon leaves the
context. A foreign lockfile-style object is entered in the daemon, as
python-daemon does, and its failure is reported by the launcher.

Launchers whose daemon's exit status matters run under the subreaper guard
of test_validation, which becomes the daemon's parent and reaps it. Every
other process is tracked by the ``daemons`` fixture and killed by PID.

Daemon scripts wait in 0.05 s sleeps (``linger()``), never one long sleep:
a SIGTERM that lands just before a long sleep would only be handled at its end.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemons, is_alive, stop, wait_gone
from test_validation import PREIMPORTS, GuardRun, expect_refused, nobody, start_guarded

from daemonkit.pidfile import PIDStatus, status

# argv: REPORT PIDFILE
SIMPLE_DAEMON = """\
LAUNCHER = os.getpid()
PATH = sys.argv[2]
with daemonkit.DaemonContext(pidfile=daemonkit.PIDFile(PATH)):
    facts.report(REPORT, launcher=LAUNCHER)
    linger()
"""


def guarded(daemons: Daemons, body: str, *args: str, linger: float = 20.0) -> tuple[GuardRun, Path]:
    """Start a launcher script under the subreaper guard; return it and its report path."""
    script = daemons.script(body)
    report = daemons.report_path()
    run = start_guarded(daemons, [sys.executable, str(script), str(report), *args], linger=linger)
    return run, report


def exit_code(run: GuardRun, pid: int) -> int:
    """Wait for the guard; the daemon's exit code (-N: killed by signal N)."""
    result = run.finish(timeout=30)
    assert result.returncode == 0, result.stderr
    assert pid in result.statuses, result
    assert pid not in result.killed, "the daemon had to be killed"
    return os.waitstatus_to_exitcode(result.statuses[pid])


def running(path: Path, pid: int) -> PIDStatus:
    return PIDStatus(str(path), PIDStatus.RUNNING, pid)


def test_the_daemon_writes_its_pid_holds_the_lock_and_removes_the_file(
    daemons: Daemons, tmp_path: Path
) -> None:
    path = tmp_path / "d.pid"
    run, report = guarded(daemons, SIMPLE_DAEMON, str(path))
    data = daemons.read_report(report)
    pid = data["pid"]
    assert pid != data["launcher"]
    assert path.read_text() == f"{pid}\n"
    assert status(path) == running(path, pid)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    os.kill(pid, signal.SIGTERM)
    assert exit_code(run, pid) == 0
    assert not path.exists()


def test_a_second_start_fails_in_the_launcher_before_any_fork(
    daemons: Daemons, tmp_path: Path
) -> None:
    path = tmp_path / "d.pid"
    launch, report = daemons.launch(SIMPLE_DAEMON, args=[str(path)])
    assert launch.returncode == 0, launch.stderr
    first = daemons.read_report(report)["pid"]
    before = path.stat()
    # expect_refused: the launcher itself caught it, never forked, left no
    # process, and closed what it opened (the pidfile's descriptor).
    caught = expect_refused(daemons, f"pidfile=daemonkit.PIDFile({str(path)!r})")
    assert caught["type"] == "AlreadyRunningError"
    assert "AlreadyLocked" in caught["mro"]
    assert f"already running as pid {first}" in caught["message"]
    assert str(path) in caught["message"]
    # The first daemon and its file are untouched.
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )
    assert path.read_text() == f"{first}\n"
    assert status(path) == running(path, first)
    assert stop(first)
    assert not path.exists()


# argv: REPORT PIDFILE LOG GO_FD
RACER = """\
import daemonkit.context, daemonkit.pidfile, daemonkit.errors, lockfile, threading
PATH, LOG, GO = sys.argv[2], sys.argv[3], int(sys.argv[4])
print("ready", flush=True)
os.read(GO, 1)  # the starting line: end of file for every racer at once
with daemonkit.DaemonContext(pidfile=daemonkit.PIDFile(PATH)):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{os.getpid()}\\n".encode())
    os.close(fd)
    facts.report(REPORT)
    linger()
"""


def read_line(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> bytes:
    """One line of a process's standard output (unbuffered pipe), or a failure."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            pytest.fail(f"process {proc.pid} said nothing within {timeout} s")
        byte = os.read(fd, 1)
        if not byte:
            pytest.fail(f"process {proc.pid} ended before saying anything")
        line += byte
    return line


def test_twenty_simultaneous_launchers_start_exactly_one_daemon(
    daemons: Daemons, tmp_path: Path
) -> None:
    count = 20
    path = tmp_path / "d.pid"
    log = tmp_path / "bodies.log"
    script = daemons.script(RACER)
    go_read, go_write = os.pipe()
    procs: list[subprocess.Popen[bytes]] = []
    reports = [tmp_path / f"racer_{index}.json" for index in range(count)]
    try:
        for report in reports:
            proc = subprocess.Popen(
                [sys.executable, str(script), str(report), str(path), str(log), str(go_read)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(go_read,),
                bufsize=0,
                cwd=tmp_path,
            )
            daemons.track(proc.pid)
            procs.append(proc)
        for proc in procs:
            assert read_line(proc) == b"ready\n"
    finally:
        os.close(go_read)
        os.close(go_write)  # go
    outcomes: list[tuple[int, str]] = []
    for proc in procs:
        _, stderr = proc.communicate(timeout=30)
        outcomes.append((proc.returncode, stderr.decode()))
    winners = [index for index, (code, _) in enumerate(outcomes) if code == 0]
    assert len(winners) == 1, outcomes
    daemon = daemons.read_report(reports[winners[0]])["pid"]
    time.sleep(0.3)  # a second body, had one started, would have logged by now
    assert log.read_text() == f"{daemon}\n"
    assert [report.exists() for report in reports].count(True) == 1
    for index, (code, err) in enumerate(outcomes):
        if index in winners:
            continue
        assert code == 1, err
        assert "daemonkit.AlreadyRunningError" in err, err
        assert "is locked: the daemon is already" in err, err
        named = re.findall(r"running as pid (\d+)", err)
        assert named in ([], [str(daemon)]), err
        if not named:
            assert "starting (no pid written yet)" in err, err
    assert status(path) == running(path, daemon)
    assert stop(daemon)
    assert not path.exists()


@pytest.mark.parametrize("how", ["kill -9", "kill -9 while a child it forked lives"])
def test_after_kill_9_a_new_start_succeeds_without_cleanup(
    daemons: Daemons, tmp_path: Path, how: str
) -> None:
    path = tmp_path / "d.pid"
    body = SIMPLE_DAEMON
    if "child" in how:
        body = body.replace(
            "    facts.report(REPORT, launcher=LAUNCHER)\n",
            "    child = os.fork()\n"
            "    if child == 0:\n"
            "        linger()\n"
            "        os._exit(0)\n"
            "    facts.report(REPORT, launcher=LAUNCHER, child=child)\n",
        )
    launch, report = daemons.launch(body, args=[str(path)])
    assert launch.returncode == 0, launch.stderr
    data = daemons.read_report(report)
    first = data["pid"]
    child = data.get("child")
    if child is not None:
        daemons.track(child)
    assert status(path) == running(path, first)
    assert stop(first, signal.SIGKILL)
    assert path.read_text() == f"{first}\n"
    assert status(path) == PIDStatus(str(path), PIDStatus.STALE, first)
    if child is not None:
        assert is_alive(child)
    launch, report = daemons.launch(body, args=[str(path)])
    assert launch.returncode == 0, launch.stderr
    data = daemons.read_report(report)
    if "child" in data:
        daemons.track(data["child"])
    second = data["pid"]
    assert second != first
    assert path.read_text() == f"{second}\n"
    assert status(path) == running(path, second)
    assert stop(second)
    assert not path.exists()


# -- privileges ------------------------------------------------------------------

# argv: REPORT PIDFILE OUT (REPORT is unused: the daemon, as nobody, writes OUT)
AS_NOBODY = (
    PREIMPORTS
    + """\
PATH, OUT = sys.argv[2], sys.argv[3]
with daemonkit.DaemonContext(pidfile=daemonkit.PIDFile(PATH), uid="nobody"):
    facts.report(OUT)
    linger()
"""
)


def start_as_nobody(daemons: Daemons, open_dir: Path, path: Path) -> tuple[GuardRun, int]:
    out = open_dir / "report.json"
    run, _ = guarded(daemons, AS_NOBODY, str(path), str(out))
    data = daemons.read_report(out)
    user = nobody()
    assert data["resuid"] == [user.pw_uid] * 3
    pid: int = data["pid"]
    # Written before the privilege drop: root's file, the daemon's pid, locked.
    assert path.stat().st_uid == 0
    assert path.read_text() == f"{pid}\n"
    assert status(path) == running(path, pid)
    return run, pid


@pytest.mark.skipif(os.geteuid() != 0, reason="changing the user needs root")
@pytest.mark.parametrize("directory_owner", ["root", "nobody"])
def test_a_daemon_that_dropped_privileges_still_cleans_up_its_pidfile(
    daemons: Daemons, open_dir: Path, directory_owner: str
) -> None:
    """Removed if the daemon's user may (its own directory), else emptied.

    In a root-owned 0755 directory the daemon (nobody) cannot unlink the
    file: it empties it through the descriptor it kept, so the file is left
    empty and unlocked, which status() reports as stale with no pid.
    """
    folder = open_dir / "run"
    folder.mkdir(mode=0o755)
    if directory_owner == "nobody":
        os.chown(folder, nobody().pw_uid, nobody().pw_gid)
    path = folder / "d.pid"
    run, pid = start_as_nobody(daemons, open_dir, path)
    os.kill(pid, signal.SIGTERM)
    assert exit_code(run, pid) == 0
    if directory_owner == "nobody":
        assert not path.exists()
    else:
        assert path.read_text() == ""
        assert status(path) == PIDStatus(str(path), PIDStatus.STALE, None)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing the user needs root")
def test_a_pidfile_the_daemon_can_no_longer_reach_is_still_emptied(
    daemons: Daemons, open_dir: Path
) -> None:
    folder = open_dir / "private"
    folder.mkdir(mode=0o700)  # root's: nobody cannot even look inside
    path = folder / "d.pid"
    run, pid = start_as_nobody(daemons, open_dir, path)
    os.kill(pid, signal.SIGTERM)
    assert exit_code(run, pid) == 0
    assert status(path).pid is None, path.read_text()


# -- other ways to use it --------------------------------------------------------


def test_detach_process_false_locks_and_writes_in_the_same_process(
    daemons: Daemons, tmp_path: Path
) -> None:
    path = tmp_path / "d.pid"
    script = daemons.script(
        """\
        with daemonkit.DaemonContext(pidfile=daemonkit.PIDFile(sys.argv[2]),
                                     detach_process=False):
            facts.report(REPORT)
            linger()
        """
    )
    report = daemons.report_path()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(report), str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    daemons.track(proc.pid)
    try:
        data = daemons.read_report(report)
        assert data["pid"] == proc.pid
        assert path.read_text() == f"{proc.pid}\n"
        assert status(path) == running(path, proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert not path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


FOREIGN_DAEMON = """\
from lockfile.pidlockfile import PIDLockFile
PATH = sys.argv[2]
with daemonkit.DaemonContext(pidfile=PIDLockFile(PATH)):
    facts.report(REPORT)
    linger()
"""


def test_a_foreign_pidlockfile_is_entered_in_the_daemon(daemons: Daemons, tmp_path: Path) -> None:
    path = tmp_path / "d.pid"
    run, report = guarded(daemons, FOREIGN_DAEMON, str(path))
    pid = daemons.read_report(report)["pid"]
    assert path.read_text() == f"{pid}\n"
    # PIDLockFile holds no lock: daemonkit cannot vouch for it.
    assert status(path) == PIDStatus(str(path), PIDStatus.UNVERIFIED, pid)
    os.kill(pid, signal.SIGTERM)
    assert exit_code(run, pid) == 0
    assert not path.exists()


@pytest.mark.parametrize(
    ("constructor", "error"),
    [
        ("lockfile.pidlockfile.PIDLockFile(PATH)", "lockfile.AlreadyLocked"),
        ("daemon.pidfile.TimeoutPIDLockFile(PATH, 0.5)", "lockfile.LockTimeout"),
    ],
)
def test_a_foreign_pidfile_that_is_locked_makes_the_launcher_exit_1(
    daemons: Daemons, tmp_path: Path, constructor: str, error: str
) -> None:
    if constructor.startswith("daemon."):
        pytest.importorskip("daemon.pidfile", reason="python-daemon is not installed")
    path = tmp_path / "d.pid"
    path.write_text(f"{os.getpid()}\n")  # a live process: locked, for PIDLockFile
    body = f"""\
import daemon.pidfile, lockfile.pidlockfile
PATH = sys.argv[2]
with daemonkit.DaemonContext(pidfile={constructor}):
    facts.report(REPORT)  # must not happen
    linger()
"""
    run, report = guarded(daemons, body, str(path), linger=10)
    result = run.finish(timeout=30)
    assert result.returncode == 1, result.stderr
    assert error in result.stderr
    assert str(path) in result.stderr
    assert result.elapsed < 20
    assert not report.exists()
    assert path.read_text() == f"{os.getpid()}\n"
    # The daemon that failed is gone, by itself.
    daemon = re.search(r"the daemon \(pid (\d+)\) failed", result.stderr)
    assert daemon is not None, result.stderr
    pid = int(daemon.group(1))
    assert pid not in result.killed, result
    assert wait_gone(pid)


# -- bad pidfiles are refused in the launcher ----------------------------------------


@pytest.mark.parametrize("case", ["symlink", "missing directory", "open directory"])
def test_an_unusable_pidfile_is_refused_before_any_fork(
    tmp_path: Path, daemons: Daemons, case: str
) -> None:
    target = tmp_path / "target"
    target.write_text("precious\n")
    before = target.stat()
    if case == "symlink":
        path = tmp_path / "link.pid"
        path.symlink_to(target)
        expected = "symbolic link"
    elif case == "missing directory":
        path = tmp_path / "missing" / "d.pid"
        expected = str(tmp_path / "missing")
    else:
        folder = tmp_path / "open"
        folder.mkdir()
        folder.chmod(0o777)
        path = folder / "d.pid"
        expected = "sticky"
    caught = expect_refused(daemons, f"pidfile=daemonkit.PIDFile({str(path)!r})")
    assert caught["type"] == "PIDFileError"
    assert "LockFailed" in caught["mro"]
    assert str(path) in caught["message"]
    assert expected in caught["message"]
    assert target.read_text() == "precious\n"
    assert target.stat().st_mtime_ns == before.st_mtime_ns
    if case == "symlink":
        assert path.is_symlink()
    else:
        assert not path.exists()


# -- a full file system ---------------------------------------------------------------


@pytest.fixture
def full_fs(tmp_path: Path) -> Iterator[Path]:
    """A tiny tmpfs, filled with zeros until ENOSPC; unmounted after the test."""
    where = tmp_path / "full"
    where.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(where)],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {getattr(exc, 'stderr', exc)}")
    try:
        fd = os.open(where / "zeros", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, bytes(65536))
        except OSError as exc:
            assert exc.errno == 28  # ENOSPC
        finally:
            os.close(fd)
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def start_on_full_fs(daemons: Daemons, path: Path) -> None:
    """Start a daemon whose pidfile is on the full file system: it must fail."""
    launch, report = daemons.launch(SIMPLE_DAEMON, args=[str(path)])
    assert launch.returncode == 1, launch.stderr
    assert "daemonkit.PIDFileError" in launch.stderr
    assert "No space left on device" in launch.stderr
    assert "the filesystem is full" in launch.stderr
    assert not report.exists()
    daemon = re.search(r"the daemon \(pid (\d+)\) failed", launch.stderr)
    assert daemon is not None
    assert wait_gone(int(daemon.group(1)))


def test_a_full_filesystem_fails_the_start_cleanly(daemons: Daemons, full_fs: Path) -> None:
    path = full_fs / "d.pid"
    start_on_full_fs(daemons, path)
    # Whatever is left does not block the next start.
    assert not status(path).running


def test_a_full_filesystem_leaves_no_pidfile(daemons: Daemons, full_fs: Path) -> None:
    path = full_fs / "d.pid"
    start_on_full_fs(daemons, path)
    assert not path.exists()
