"""Bad configuration fails in the launcher, before any fork, naming the culprit.

Each launcher script catches the daemonkit exception and writes its type,
its message and ``os.getpid()`` to the report. It runs under a small guard
process that makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``):
anything the launcher forked and left behind, even after a double fork,
becomes the guard's child, so the guard can tell the test whether any process
was left (and then kills and reaps it, by PID, being its parent). The
launcher also counts fork attempts with ``os.register_at_fork``.

The guard helpers here are imported by test_privileges and test_compat.

Daemon scripts wait in 0.05 s sleeps, never one long ``time.sleep(30)``:
CPython runs a Python signal handler between bytecodes, so a SIGTERM that
lands just before a long sleep starts is only handled when the sleep ends.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemons

GUARD_SOURCE = r"""
import ctypes, json, os, signal, subprocess, sys, time

PR_SET_CHILD_SUBREAPER = 36
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    code = ctypes.get_errno()
    raise OSError(code, os.strerror(code))
result_path, linger, command = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
me = str(os.getpid())


def children():
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            found.append(int(name))
    return sorted(found)


launcher = subprocess.Popen(command)
launcher_status = os.waitpid(launcher.pid, 0)[1]
launcher.returncode = 0  # reaped above; keep subprocess from trying again
# Orphans are reparented to us before the launcher's exit is reported; a
# daemon's intermediate process leaves only then, so its child (the daemon)
# arrives a moment later: keep looking for the whole linger.
seen = set(children())
statuses = {}
deadline = time.monotonic() + linger
while True:
    seen.update(children())
    try:
        pid, status = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break
    if pid:
        statuses[str(pid)] = status
        continue
    if time.monotonic() >= deadline:
        break
    time.sleep(0.01)
killed = []
for _ in range(100):
    remaining = children()
    if not remaining:
        break
    seen.update(remaining)
    for pid in remaining:  # our own children: their pids cannot be reused yet
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        statuses[str(pid)] = os.waitpid(pid, 0)[1]
        killed.append(pid)
leftover = sorted(seen)
with open(result_path, "w") as out:
    json.dump(
        {
            "launcher": launcher.pid,
            "launcher_status": launcher_status,
            "leftover": leftover,
            "statuses": statuses,
            "killed": killed,
        },
        out,
    )
"""

# Modules daemonkit, facts and the scripts may import lazily. A launcher that
# drops to another user imports them first: the interpreter's own files may
# not be readable by that user (e.g. a pyenv build under /root, mode 0700).
PREIMPORTS = """\
import atexit, errno, fcntl, grp, io, linecache, pwd, resource, select, stat
import tokenize, traceback, warnings
import daemonkit.context, daemonkit.errors
"""


def drop_to(uid: int, gid: int) -> str:
    """Script lines making the launcher a process of ``uid``/``gid``, no groups."""
    return PREIMPORTS + (
        f"os.setgroups([])\nos.setresgid({gid}, {gid}, {gid})\n"
        f"os.setresuid({uid}, {uid}, {uid})\n"
        f"assert os.getresuid() == ({uid}, {uid}, {uid}), os.getresuid()\n"
    )


def nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this system")


def drop_to_nobody() -> str:
    user = nobody()
    return drop_to(user.pw_uid, user.pw_gid)


@dataclass
class Guarded:
    """How a launcher run under the guard ended, and what it left behind."""

    launcher_pid: int
    returncode: int
    stdout: str
    stderr: str
    leftover: list[int]
    statuses: dict[int, int]
    killed: list[int]
    elapsed: float


@dataclass
class GuardRun:
    """A guard process still running (it may linger to reap the daemon)."""

    proc: subprocess.Popen[str]
    result: Path
    began: float

    def finish(self, timeout: float = 30.0) -> Guarded:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"guarded launcher did not finish within {timeout} s; stderr: {err}")
        elapsed = time.monotonic() - self.began
        assert self.proc.returncode == 0, f"guard failed: {err}"
        data = json.loads(self.result.read_text())
        return Guarded(
            launcher_pid=data["launcher"],
            returncode=os.waitstatus_to_exitcode(data["launcher_status"]),
            stdout=out,
            stderr=err,
            leftover=data["leftover"],
            statuses={int(pid): status for pid, status in data["statuses"].items()},
            killed=data["killed"],
            elapsed=elapsed,
        )


def start_guarded(daemons: Daemons, command: list[str], *, linger: float = 0.0) -> GuardRun:
    """Start ``command`` (a launcher) under the subreaper guard."""
    guard = daemons.tmp_path / "guard.py"
    if not guard.exists():
        guard.write_text(GUARD_SOURCE)
    result = daemons.tmp_path / f"guard_{time.monotonic_ns()}.json"
    began = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(guard), str(result), str(linger), *command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=daemons.tmp_path,
        text=True,
    )
    daemons.track(proc.pid)
    return GuardRun(proc, result, began)


def run_guarded(
    daemons: Daemons, body: str, report: Path | None = None, *, timeout: float = 30.0
) -> tuple[Guarded, Path]:
    """Run a launcher script (conftest's prelude + ``body``) under the guard.

    ``report`` (default: the harness's report path for this script) is passed
    as the script's ``REPORT`` (sys.argv[1]); it is returned with the outcome.
    """
    script = daemons.script(body)
    if report is None:
        report = daemons.report_path()
    run = start_guarded(daemons, [sys.executable, str(script), str(report)])
    return run.finish(timeout), report


# The launcher side of every validation case: count fork attempts, try to
# open the context, report the exception with this process's pid.
CATCH_TEMPLATE = """\
FORKS = []
os.register_at_fork(before=lambda: FORKS.append(1))
FDS_BEFORE = sorted(os.listdir("/proc/self/fd"))
try:
    context = daemonkit.DaemonContext(**KWARGS)
    with context:
        facts.report(REPORT, outcome="daemon")  # must not happen
        for _ in range(600): time.sleep(0.05)
except Exception as exc:
    FDS_AFTER = sorted(os.listdir("/proc/self/fd"))
    with open(REPORT, "w") as out:
        json.dump(
            {
                "outcome": "raised",
                "pid": os.getpid(),
                "type": type(exc).__name__,
                "mro": [cls.__name__ for cls in type(exc).__mro__],
                "module": type(exc).__module__,
                "message": str(exc),
                "errno": getattr(exc, "errno", None),
                "forks": len(FORKS),
                "fds_before": FDS_BEFORE,
                "fds_after": FDS_AFTER,
            },
            out,
        )
"""


def expect_refused(
    daemons: Daemons,
    kwargs_source: str,
    report: Path | None = None,
    *,
    setup: str = "",
    forks: int = 0,
) -> dict[str, Any]:
    """Run a launcher with ``DaemonContext(<kwargs_source>)``; check nothing ran.

    Returns the launcher's report of the exception it caught.
    """
    body = setup + f"KWARGS = dict({kwargs_source})\n" + CATCH_TEMPLATE
    result, report = run_guarded(daemons, body, report)
    assert result.returncode == 0, result.stderr
    assert report.exists(), f"launcher wrote no report; stderr: {result.stderr}"
    data: dict[str, Any] = json.loads(report.read_text())
    assert data["outcome"] == "raised", data
    # The exception was caught by the very process that was started ...
    assert data["pid"] == result.launcher_pid
    # ... which did not try to fork (or tried exactly ``forks`` times) ...
    assert data["forks"] == forks
    # ... and left no process behind, alive or zombie.
    assert result.leftover == [], f"processes left behind: {result.leftover}"
    assert result.killed == []
    # Whatever it opened to validate (stream files, pipes) it closed again.
    assert data["fds_after"] == data["fds_before"]
    assert "DaemonError" in data["mro"]
    assert data["module"] == "daemonkit"
    return data


@pytest.fixture
def area(tmp_path: Path) -> Path:
    """A directory for the cases' files; tests check it is left as it was."""
    folder = tmp_path / "area"
    folder.mkdir()
    (folder / "a_file").write_text("not a directory\n")
    (folder / "jail").mkdir()
    return folder


def listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def free_uid() -> int:
    uid = 3_999_000
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


def free_gid() -> int:
    import grp

    gid = 3_999_000
    while True:
        try:
            grp.getgrgid(gid)
        except KeyError:
            return gid
        gid += 1


# Every case also names stream files that would be created if validation
# reached them; ``area`` must be unchanged afterwards.
STREAMS = "stdout=AREA + '/new-out.log', stderr=AREA + '/new-err.log'"

CASES: dict[str, tuple[str, str, list[str]]] = {
    # id: (keyword arguments, exception type, substrings of its message)
    "missing_working_directory": (
        f"working_directory=AREA + '/missing', {STREAMS}",
        "DirectoryError",
        ["working_directory", "AREA/missing", "does not exist"],
    ),
    "working_directory_is_file": (
        f"working_directory=AREA + '/a_file', {STREAMS}",
        "DirectoryError",
        ["working_directory", "AREA/a_file", "not a directory"],
    ),
    "missing_chroot_directory": (
        f"chroot_directory=AREA + '/no-jail', {STREAMS}",
        "DirectoryError",
        ["chroot_directory", "AREA/no-jail", "does not exist"],
    ),
    "chroot_is_file": (
        f"chroot_directory=AREA + '/a_file', {STREAMS}",
        "DirectoryError",
        ["chroot_directory", "AREA/a_file", "not a directory"],
    ),
    # AREA exists outside the jail but not inside it: checked inside.
    "working_directory_missing_inside_chroot": (
        f"chroot_directory=AREA + '/jail', working_directory=AREA, {STREAMS}",
        "DirectoryError",
        ["working_directory", "AREA (inside chroot AREA/jail)", "does not exist"],
    ),
    "unknown_user_by_name": (
        f"uid='daemonkit-no-such-user', {STREAMS}",
        "UnknownUserError",
        ["uid", "'daemonkit-no-such-user'"],
    ),
    "unknown_user_by_number": (
        f"uid=FREE_UID, {STREAMS}",
        "UnknownUserError",
        ["uid", "FREE_UID"],
    ),
    "unknown_group_by_name": (
        f"gid='daemonkit-no-such-group', {STREAMS}",
        "UnknownGroupError",
        ["gid", "'daemonkit-no-such-group'"],
    ),
    "unknown_group_by_number": (
        f"gid=FREE_GID, {STREAMS}",
        "UnknownGroupError",
        ["gid", "FREE_GID"],
    ),
    "unknown_group_with_known_user": (
        f"uid='nobody', gid='daemonkit-no-such-group', {STREAMS}",
        "UnknownGroupError",
        ["gid", "'daemonkit-no-such-group'"],
    ),
    "stdout_in_missing_directory": (
        "stdout=AREA + '/no-dir/out.log', stderr=AREA + '/new-err.log'",
        "StreamError",
        ["stdout", "AREA/no-dir/out.log", "create the directory first"],
    ),
    # stdout is created first, then stderr fails: stdout must be removed.
    "stderr_in_missing_directory": (
        "stdout=AREA + '/new-out.log', stderr=AREA + '/no-dir/err.log'",
        "StreamError",
        ["stderr", "AREA/no-dir/err.log", "create the directory first"],
    ),
    "stdout_is_directory": (
        "stdout=AREA, stderr=AREA + '/new-err.log'",
        "StreamError",
        ["stdout", "'AREA'", "not a directory"],
    ),
    "stderr_is_directory": (
        "stdout=AREA + '/new-out.log', stderr=AREA + '/jail'",
        "StreamError",
        ["stderr", "'AREA/jail'", "not a directory"],
    ),
    "stdout_is_stringio": (
        "stdout=io.StringIO(), stderr=AREA + '/new-err.log'",
        "StreamError",
        ["stdout", "StringIO", "fileno"],
    ),
    "stderr_is_stringio": (
        "stdout=AREA + '/new-out.log', stderr=io.StringIO()",
        "StreamError",
        ["stderr", "StringIO", "fileno"],
    ),
    "stdin_is_stringio": (
        f"stdin=io.StringIO(), {STREAMS}",
        "StreamError",
        ["stdin", "StringIO", "fileno"],
    ),
    "stdout_closed_file": (
        "stdout=CLOSED, stderr=AREA + '/new-err.log'",
        "StreamError",
        ["stdout", "fileno"],
    ),
    "umask_negative": (f"umask=-1, {STREAMS}", "ConfigurationError", ["umask", "-1"]),
    "umask_too_large": (f"umask=0o1000, {STREAMS}", "ConfigurationError", ["umask", "512"]),
    "umask_str": (f"umask='022', {STREAMS}", "ConfigurationError", ["umask", "'022'"]),
    "umask_float": (f"umask=18.0, {STREAMS}", "ConfigurationError", ["umask", "18.0"]),
    "files_preserve_str": (
        f"files_preserve='/etc/passwd', {STREAMS}",
        "ConfigurationError",
        ["files_preserve", "'/etc/passwd'"],
    ),
    "files_preserve_negative_fd": (
        f"files_preserve=[-1], {STREAMS}",
        "ConfigurationError",
        ["files_preserve", "-1"],
    ),
    "ready_timeout_zero": (
        f"ready_timeout=0, {STREAMS}",
        "ConfigurationError",
        ["ready_timeout", "0"],
    ),
    "ready_timeout_negative": (
        f"ready_timeout=-1, {STREAMS}",
        "ConfigurationError",
        ["ready_timeout", "-1"],
    ),
    "ready_timeout_str": (
        f"ready_timeout='x', {STREAMS}",
        "ConfigurationError",
        ["ready_timeout", "'x'"],
    ),
    "signal_map_unknown_name": (
        f"signal_map={{'SIGNOPE': None}}, {STREAMS}",
        "SignalMapError",
        ["signal_map", "'SIGNOPE'"],
    ),
}


# Without root, a valid chroot is refused (PrivilegeError) before its inside is checked.
NEEDS_ROOT = {"working_directory_missing_inside_chroot"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_configuration_fails_before_fork(daemons: Daemons, area: Path, case: str) -> None:
    if case in NEEDS_ROOT and os.geteuid() != 0:
        pytest.skip("a chroot is only checked inside when the launcher may chroot")
    kwargs, expected_type, fragments = CASES[case]
    uid, gid = free_uid(), free_gid()

    def fill(text: str) -> str:
        return (
            text.replace("FREE_UID", str(uid))
            .replace("FREE_GID", str(gid))
            .replace("AREA", str(area))
        )

    setup = (
        f"import io\nAREA = {str(area)!r}\nFREE_UID = {uid}\nFREE_GID = {gid}\n"
        "CLOSED = open(os.devnull, 'w')\nCLOSED.close()\n"
    )
    before = listing(area)
    data = expect_refused(daemons, kwargs, setup=setup)
    assert data["type"] == expected_type, data["message"]
    for fragment in fragments:
        assert fill(fragment) in data["message"]
    assert "ConfigurationError" in data["mro"]
    assert "ValueError" in data["mro"]
    # No stream file (nor anything else) was left behind.
    assert listing(area) == before


def test_stderr_failure_removes_the_stdout_file_it_created(daemons: Daemons, area: Path) -> None:
    """A stream file daemonkit created is removed when a later stream fails."""
    kwargs = "stdout=AREA + '/created.log', stderr=AREA + '/no-dir/err.log'"
    setup = f"AREA = {str(area)!r}\n"
    data = expect_refused(daemons, kwargs, setup=setup)
    assert data["type"] == "StreamError"
    assert not (area / "created.log").exists()


def test_existing_stdout_file_is_kept_when_stderr_fails(daemons: Daemons, area: Path) -> None:
    """Only files daemonkit created are removed; an existing log is untouched."""
    log = area / "existing.log"
    log.write_text("old content\n")
    kwargs = "stdout=AREA + '/existing.log', stderr=AREA + '/no-dir/err.log'"
    setup = f"AREA = {str(area)!r}\n"
    data = expect_refused(daemons, kwargs, setup=setup)
    assert data["type"] == "StreamError"
    assert log.read_text() == "old content\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the launcher as nobody")
@pytest.mark.parametrize("target", ["root_owned_file", "root_owned_directory"])
def test_unwritable_stream_path_as_non_root(daemons: Daemons, open_dir: Path, target: str) -> None:
    (open_dir / "root_owned_file").write_text("")
    (open_dir / "root_owned_file").chmod(0o644)
    (open_dir / "root_owned_directory").mkdir(mode=0o755)
    path = (
        open_dir / "root_owned_file"
        if target == "root_owned_file"
        else open_dir / "root_owned_directory" / "out.log"
    )
    before = listing(open_dir)
    report = open_dir / "report.json"
    data = expect_refused(
        daemons,
        f"stdout={str(path)!r}, working_directory={str(open_dir)!r}",
        report,
        setup=drop_to_nobody(),
    )
    assert data["type"] == "StreamError"
    assert "stdout" in data["message"]
    assert str(path) in data["message"]
    assert "permission" in data["message"].lower()
    report.unlink()
    assert listing(open_dir) == before
    assert (open_dir / "root_owned_file").read_text() == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the launcher as nobody")
def test_failed_first_fork_leaves_nothing_behind(daemons: Daemons, open_dir: Path) -> None:
    """The stream files are opened last; if the fork itself fails they go away.

    RLIMIT_NPROC of 1 makes the real fork(2) fail with EAGAIN for a non-root
    user (root is exempt), after validation has created the stdout file.
    """
    report = open_dir / "report.json"
    setup = drop_to_nobody() + "resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))\n"
    data = expect_refused(
        daemons,
        f"stdout={str(open_dir / 'out.log')!r}, working_directory={str(open_dir)!r}",
        report,
        setup=setup,
        forks=1,
    )
    assert data["type"] == "DaemonProcessDetachError"
    assert "OSError" in data["mro"]
    assert data["errno"] == 11  # EAGAIN
    assert "fork" in data["message"]
    assert not (open_dir / "out.log").exists()
    assert sorted(path.name for path in open_dir.iterdir()) == ["report.json"]


def test_guard_sees_a_daemon_left_behind(daemons: Daemons, area: Path) -> None:
    """The no-fork check is not vacuous: a real detach is seen, and cleaned up."""
    body = (
        f"AREA = {str(area)!r}\n"
        + "FORKS = []\n"
        + "os.register_at_fork(before=lambda: FORKS.append(1))\n"
        + "with daemonkit.DaemonContext(working_directory=AREA, wait_ready=True):\n"
        + "    facts.report(REPORT, forks=len(FORKS))\n"
        + "    daemonkit.ready()  # the report exists before the launcher exits\n"
        + "    for _ in range(600): time.sleep(0.05)\n"
    )
    result, report = run_guarded(daemons, body)
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["pid"] != result.launcher_pid
    assert data["forks"] == 2  # the double fork, as seen from the daemon
    assert data["pid"] in result.leftover
    assert data["pid"] in result.killed
