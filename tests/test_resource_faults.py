"""Resource faults: fork refused, descriptors exhausted, owners missing, a chroot without libraries.

Each fault is real: RLIMIT_NPROC for a non-root user makes fork(2) itself
fail with EAGAIN (root is exempt, so the launcher switches to a uid that
has no other process, which makes the count exact), RLIMIT_NOFILE makes
pipe(2) and open(2) fail with EMFILE, and the chroot is a directory without
the interpreter's libraries. What must hold: a clear error naming what
failed, a non-zero exit status, no half-started daemon, no pidfile left,
never a hang or a raw traceback.

Launchers run under the subreaper guard of test_validation (which reaps and
reports every descendant) or are tracked by the ``daemons`` fixture; every
process is killed by PID.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemons, Launch, wait_gone, wait_until
from test_validation import PREIMPORTS, free_gid, free_uid, run_guarded, start_guarded

DAEMONKIT = [sys.executable, "-m", "daemonkit"]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (setuid, chroot, rlimits)")


def dk(daemons: Daemons, *args: str | Path, timeout: float = 20.0) -> Launch:
    """``python -m daemonkit ARGS`` to its end (the process is tracked)."""
    return daemons.run([*DAEMONKIT, *map(str, args)], timeout=timeout)


@pytest.fixture
def lone_uid() -> Iterator[tuple[int, Path]]:
    """A uid no process runs as, and a 0755 directory it owns for its pidfile."""
    uid = free_uid()
    folder = Path(tempfile.mkdtemp(prefix="daemonkit-nproc-"))
    os.chown(folder, uid, uid)
    os.chmod(folder, 0o755)
    try:
        yield uid, folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- fork refused (RLIMIT_NPROC) ---------------------------------------------------------

# argv: REPORT UID LIMIT PIDFILE MODE. Becomes UID (root exempts itself from
# RLIMIT_NPROC), limits it to LIMIT processes, then starts a daemon through
# the command (MODE cli) or DaemonContext (MODE context).
NPROC_LAUNCHER = (
    PREIMPORTS
    + """\
import locale, gettext, shutil, lockfile
import daemonkit.cli, daemonkit.pidfile, daemonkit.readiness, daemonkit._launcher
daemonkit.cli.build_parser().parse_args(["start", "--", "true"])  # argparse's lazy imports
UID, LIMIT, PIDFILE, MODE = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
os.setgroups([])
os.setresgid(UID, UID, UID)
os.setresuid(UID, UID, UID)
resource.setrlimit(resource.RLIMIT_NPROC, (LIMIT, LIMIT))
if MODE == "cli":
    sys.exit(daemonkit.cli.main(["start", "--pidfile", PIDFILE, "--", "sleep", "60"]))
with daemonkit.DaemonContext(pidfile=daemonkit.PIDFile(PIDFILE)):
    facts.report(REPORT)
    linger()
"""
)


@needs_root
@pytest.mark.parametrize(
    ("mode", "limit", "which"),
    [("cli", 1, "first fork"), ("cli", 2, "second fork"), ("context", 2, "second fork")],
    ids=["cli-first-fork", "cli-second-fork", "context-second-fork"],
)
def test_a_refused_fork_fails_the_start_cleanly(
    daemons: Daemons, lone_uid: tuple[int, Path], mode: str, limit: int, which: str
) -> None:
    """The launcher is the only process of its uid: a limit of 1 refuses the
    first fork, 2 the second (in the intermediate process). The launcher
    exits 1 naming that fork and EAGAIN; the pidfile it had locked is gone;
    no process is left (the guard kills none). The DaemonContext case of the
    first fork is test_validation's test_failed_first_fork_leaves_nothing_behind."""
    uid, folder = lone_uid
    pidfile = folder / "d.pid"
    script = daemons.script(NPROC_LAUNCHER)
    report = daemons.report_path()
    run = start_guarded(
        daemons,
        [sys.executable, str(script), str(report), str(uid), str(limit), str(pidfile), mode],
    )
    result = run.finish(20)
    assert result.returncode == 1, result.stderr
    assert f"cannot fork ({which})" in result.stderr, result.stderr
    assert "Resource temporarily unavailable" in result.stderr
    assert result.killed == [], "a process had to be killed"
    if which == "first fork":
        assert result.leftover == []
        assert "Traceback" not in result.stderr
    assert not report.exists(), "the daemon's body ran"
    assert not pidfile.exists()
    assert list(folder.iterdir()) == []


# -- descriptors exhausted (RLIMIT_NOFILE) -------------------------------------------------

# argv: REPORT FREE. With RLIMIT_NOFILE 32, fill the table until only FREE
# descriptors are free, preserve ten of the fillers, and open the context.
# The daemon reports from its body; the launcher reports what it caught and
# which descriptors it had open before and after (the fillers closed).
EMFILE_LAUNCHER = """\
import errno, traceback
import daemonkit.context, daemonkit._detach, daemonkit.readiness, daemonkit._launcher
import daemonkit.errors, daemonkit._posix, daemonkit._plan, daemonkit.streams
FREE = int(sys.argv[2])
resource = __import__("resource")
resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
BEFORE = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
fillers = []
while True:
    try:
        fillers.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == errno.EMFILE
        break
for _ in range(FREE):
    os.close(fillers.pop())
PRESERVED = fillers[:10]
outcome = {}
try:
    with daemonkit.DaemonContext(files_preserve=PRESERVED):
        facts.report(REPORT, preserved=PRESERVED)
except BaseException as exc:
    outcome = {
        "type": type(exc).__name__,
        "mro": [cls.__name__ for cls in type(exc).__mro__],
        "message": str(exc),
        "traceback": traceback.format_exc(),
    }
for fd in fillers:
    os.close(fd)
AFTER = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
with open(REPORT + ".launcher", "w") as out:
    json.dump({"pid": os.getpid(), "before": BEFORE, "after": AFTER, **outcome}, out)
"""

FREE_RANGE = range(1, 9)


def emfile_outcomes(daemons: Daemons) -> list[dict[str, Any]]:
    """Run the launcher with 1 to 8 free descriptors; what each run did."""
    outcomes = []
    for free in FREE_RANGE:
        script = daemons.script(EMFILE_LAUNCHER)
        report = daemons.report_path()
        # linger: a daemon that started is waited for (and reaped) until it exits.
        run = start_guarded(
            daemons, [sys.executable, str(script), str(report), str(free)], linger=10
        )
        result = run.finish(30)
        assert result.returncode == 0, (free, result.stderr)
        assert result.killed == [], (free, "a process had to be killed")
        started = report.exists()
        # A launcher whose daemon started exits in the handshake: no report of its own.
        written = Path(f"{report}.launcher")
        launcher = json.loads(written.read_text()) if written.exists() else {}
        assert started or launcher, (free, result.stderr)
        if started:
            daemon = json.loads(report.read_text())
            assert wait_gone(daemon["pid"])
            # The daemon kept exactly the ten preserved descriptors and 0-2.
            kept = sorted(int(fd) for fd in daemon["fds"])
            assert kept == sorted([0, 1, 2, *daemon["preserved"]]), (free, kept)
        outcomes.append({"free": free, "started": started, **launcher})
    return outcomes


def test_descriptor_exhaustion_is_a_daemon_error_or_a_start(daemons: Daemons) -> None:
    """From 1 to 8 free descriptors (limit 32, ten of them in files_preserve):
    each start either succeeds (the daemon ran and kept exactly the
    preserved descriptors) or fails in the launcher with a DaemonError that
    says descriptors ran out. Never a bare OSError, never a hang."""
    outcomes = emfile_outcomes(daemons)
    assert any(outcome["started"] for outcome in outcomes), "never enough descriptors"
    for outcome in outcomes:
        if outcome["started"]:
            continue
        assert "DaemonError" in outcome["mro"], (outcome["free"], outcome["traceback"])
        assert "Too many open files" in outcome["message"]


def test_descriptor_exhaustion_leaks_no_descriptor(daemons: Daemons) -> None:
    """Whatever the outcome, a start that failed in the launcher closes what it
    opened: the launcher's descriptors afterwards are those it had before."""
    outcomes = emfile_outcomes(daemons)
    for outcome in outcomes:
        if not outcome["started"]:
            assert outcome["after"] == outcome["before"], outcome


# argv: REPORT FREE PIDFILE. The command's launcher with only FREE descriptors free.
EMFILE_CLI = """\
import errno, locale, gettext, shutil, lockfile
import daemonkit.cli, daemonkit.context, daemonkit._detach, daemonkit.readiness
import daemonkit._launcher, daemonkit.pidfile, daemonkit._activation, daemonkit.notify
daemonkit.cli.build_parser().parse_args(["start", "--", "true"])
FREE, PIDFILE = int(sys.argv[2]), sys.argv[3]
resource = __import__("resource")
resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
fillers = []
while True:
    try:
        fillers.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == errno.EMFILE
        break
for _ in range(FREE):
    os.close(fillers.pop())
sys.exit(daemonkit.cli.main(["start", "--pidfile", PIDFILE, "--", "sleep", "60"]))
"""


def test_cli_at_the_descriptor_limit_fails_without_a_traceback(
    daemons: Daemons, tmp_path: Path
) -> None:
    """``daemonkit start`` whose launcher has almost no free descriptor: exit 0
    with a daemon, or exit 1 with one line saying descriptors ran out; no
    traceback, no pidfile left by a failed start."""
    script = daemons.script(EMFILE_CLI)
    failures = []
    for free in FREE_RANGE:
        pidfile = tmp_path / f"d{free}.pid"
        launch = daemons.run([sys.executable, str(script), "-", str(free), str(pidfile)])
        if launch.returncode == 0:
            pid = int(pidfile.read_text())
            daemons.track(pid)
            continue
        if launch.returncode != 1 or "Traceback" in launch.stderr or pidfile.exists():
            failures.append((free, launch.returncode, launch.stderr[-300:]))
    assert failures == []


# argv: REPORT MODE PIDFILE. Raises RLIMIT_NOFILE to 65536 where it may (root
# with CAP_SYS_RESOURCE), leaves descriptors open at 1000 and at the top (60000,
# or the hard limit's last), both inheritable, then lowers the soft limit below
# them, and starts a daemon.
HIGH_FD_LAUNCHER = """\
MODE, PIDFILE = sys.argv[2], sys.argv[3]
resource = __import__("resource")
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
except (ValueError, OSError):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
TOP = min(60000, resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 1)
source = os.open(os.devnull, os.O_RDONLY)
for high in (1000, TOP):
    os.dup2(source, high, inheritable=True)
os.close(source)
with open(REPORT + ".top", "w") as out:
    out.write(str(TOP))
HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (256, HARD))  # both now above the soft limit
if MODE == "cli":
    import daemonkit.cli
    sys.exit(daemonkit.cli.main(["start", "--pidfile", PIDFILE, "--", "sleep", "60"]))
with daemonkit.DaemonContext(pidfile=daemonkit.PIDFile(PIDFILE)):
    facts.report(REPORT)
    linger()
"""


@needs_root
@pytest.mark.parametrize("mode", ["cli", "context"])
def test_descriptors_high_above_the_soft_limit_do_not_leak_into_the_daemon(
    daemons: Daemons, tmp_path: Path, mode: str
) -> None:
    """Descriptors 1000 and 60000 (or, where the hard RLIMIT_NOFILE cannot be
    raised, the hard limit's last) are open and inheritable in the
    launcher, above its soft RLIMIT_NOFILE, which only /proc reveals. The
    daemon, Python or exec'd program, has neither: /proc/DAEMONPID/fd holds
    0-2 and the pidfile's lock only."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 2000:
        pytest.skip("the hard RLIMIT_NOFILE is below 2000")
    pidfile = tmp_path / "d.pid"
    launch, report = daemons.launch(HIGH_FD_LAUNCHER, args=[mode, str(pidfile)])
    assert launch.returncode == 0, launch.stderr
    top = int(Path(f"{report}.top").read_text())
    assert top > 1000
    assert wait_until(lambda: pidfile.exists() and pidfile.read_text().strip().isdigit())
    pid = int(pidfile.read_text())
    daemons.track(pid)
    if mode == "context":
        daemons.read_report(report)
    fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    assert top not in fds and 1000 not in fds, fds
    extra = {fd: target for fd, target in fds.items() if fd > 2}
    assert list(extra.values()) == [str(pidfile)], fds


# -- owners that do not exist ----------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("option", ["--user", "--group"])
@pytest.mark.parametrize("form", ["number", "name"])
def test_cli_refuses_a_missing_user_or_group_before_any_fork(
    daemons: Daemons, tmp_path: Path, option: str, form: str
) -> None:
    """``--user``/``--group`` naming no entry of the user or group database,
    by name or by number: daemonkit documents UnknownUserError/
    UnknownGroupError ("no such user (name or uid)"), so a bare numeric uid
    without a passwd entry is refused too (python-daemon would setuid to
    it). Exit 6 (bad configuration) naming the value, no pidfile, no
    process. test_cli covers only an unknown user name."""
    if form == "number":
        value = str(free_uid() if option == "--user" else free_gid())
    else:
        value = "daemonkit-no-such-" + option.lstrip("-")
    pidfile = tmp_path / "d.pid"
    run = start_guarded(
        daemons, [*DAEMONKIT, "start", "--pidfile", str(pidfile), option, value, "--", "true"]
    )
    result = run.finish(20)
    assert result.returncode == 6, result.stderr
    assert value in result.stderr
    assert ("user" if option == "--user" else "group") in result.stderr
    assert "Traceback" not in result.stderr
    assert result.leftover == []
    assert not pidfile.exists()


# -- a chroot without the interpreter's libraries --------------------------------------------


def jail_with(tmp_path: Path, *, sh: bool, libraries: bool, where: str = "bin/sh") -> Path:
    """A chroot directory; with ``sh`` a copy of the host's shell at ``where``,
    with ``libraries`` also its dynamic loader and libraries (so it runs)."""
    jail = tmp_path / "jail"
    jail.mkdir()
    if sh:
        shell = Path(os.path.realpath(shutil.which("sh") or "/bin/sh"))
        (jail / where).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(shell, jail / where)
        if libraries:
            listed = subprocess.run(["ldd", str(shell)], capture_output=True, text=True)
            for path in re.findall(r"(/\S+\.so[.\d]*)", listed.stdout):
                copy = jail / path.lstrip("/")
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(os.path.realpath(path), copy)
            check = subprocess.run(
                ["chroot", str(jail), f"/{where}", "-c", "echo ok"], capture_output=True
            )
            if check.stdout != b"ok\n":
                pytest.skip(f"cannot build a working jail: {check.stderr!r}")
    return jail


@needs_root
@pytest.mark.parametrize(
    ("sh", "libraries"), [(False, False), (True, False)], ids=["no-shell", "shell-without-libs"]
)
def test_cli_exec_failing_inside_the_chroot_fails_the_start(
    daemons: Daemons, tmp_path: Path, sh: bool, libraries: bool
) -> None:
    """``start --chroot JAIL -- /bin/sh``: the shell exists on the host; in
    the jail it is missing, or present without its dynamic loader (execve
    says ENOENT either way). The launcher exits 1 saying the exec failed,
    the daemon is gone, the pidfile is removed, nothing is left."""
    jail = jail_with(tmp_path, sh=sh, libraries=libraries)
    pidfile = tmp_path / "d.pid"
    run = start_guarded(
        daemons,
        [*DAEMONKIT, "start", "--pidfile", str(pidfile), "--chroot", str(jail), "--",
         "/bin/sh", "-c", "sleep 60"],
    )  # fmt: skip
    result = run.finish(20)
    if sh:  # found inside the jail, but its loader is missing: execve fails
        assert result.returncode == 1, result.stderr
        assert f"cannot execute /bin/sh inside the chroot {jail}" in result.stderr
        assert "No such file or directory" in result.stderr
    else:  # looked up inside the jail, before any fork
        assert result.returncode == 5, result.stderr
        assert f"command not found inside the chroot {jail}: /bin/sh" in result.stderr
    assert result.killed == [], "a half-started daemon had to be killed"
    assert not pidfile.exists()


@needs_root
def test_cli_exec_error_inside_a_chroot_names_the_chroot(daemons: Daemons, tmp_path: Path) -> None:
    """The message must let the user see why an existing /bin/sh 'does not
    exist': it names the chroot directory."""
    jail = jail_with(tmp_path, sh=False, libraries=False)
    launch = dk(daemons, "start", "--chroot", jail, "--", "/bin/sh", "-c", "sleep 60")
    assert launch.returncode == 5, launch.stderr
    assert str(jail) in launch.stderr


@needs_root
def test_cli_chroot_runs_a_program_that_exists_only_inside_the_jail(
    daemons: Daemons, tmp_path: Path
) -> None:
    """``start --chroot JAIL -- /opt/app/sh`` where /opt/app/sh (with its
    libraries) exists in the jail only: the program runs, jailed."""
    jail = jail_with(tmp_path, sh=True, libraries=True, where="opt/app/sh")
    assert not Path("/opt/app/sh").exists()
    os.mkfifo(jail / "opt/app/fifo")  # nobody writes: opening it to read blocks
    pidfile = tmp_path / "d.pid"
    launch = dk(
        daemons, "start", "--pidfile", pidfile, "--chroot", jail,
        "--", "/opt/app/sh", "-c", "read x < /opt/app/fifo",
    )  # fmt: skip
    if pidfile.exists():
        daemons.track(int(pidfile.read_text()))
    assert launch.returncode == 0, launch.stderr
    pid = int(pidfile.read_text())
    assert os.readlink(f"/proc/{pid}/root") == str(jail)


@needs_root
def test_context_import_failing_inside_the_chroot_leaves_no_pidfile(
    daemons: Daemons, tmp_path: Path
) -> None:
    """A Python daemon whose body imports a module after the chroot (the
    jail has no Python library): the launcher (wait_ready) exits 1 with the
    daemon's ImportError, and the pidfile it locked, outside the jail, is
    gone; no process is left. test_privileges checks the message alone."""
    jail = jail_with(tmp_path, sh=False, libraries=False)
    pidfile = tmp_path / "d.pid"
    body = f"""\
with daemonkit.DaemonContext(
    chroot_directory={str(jail)!r}, pidfile=daemonkit.PIDFile({str(pidfile)!r}), wait_ready=True
):
    import sqlite3  # not imported before: looked up inside the jail
    daemonkit.ready()
    linger()
"""
    result, _ = run_guarded(daemons, body)
    assert result.returncode == 1, result.stderr
    assert "ModuleNotFoundError" in result.stderr
    assert "sqlite3" in result.stderr
    assert result.killed == [], "a half-started daemon had to be killed"
    assert not pidfile.exists()
    assert list(jail.iterdir()) == []
