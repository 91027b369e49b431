"""Hostile file systems: unsafe pidfiles and log paths, files changed under a running daemon.

test_pidfile.py and test_pidfile_daemon.py check the PIDFile object itself;
here the same cases go through the ``daemonkit`` command and through
``DaemonContext(pidfile=PIDFile(P))`` where they were not covered yet, and
the log paths (``stdout=``/``stderr=``, ``--stdout``/``--stderr``) meet the
same hostile files: symlinks, fifos, directories, missing or world-writable
directories, read-only and full file systems.

What every refusal must look like: a clear error naming the path and what
to do, a non-zero exit status, no process left running (launchers run under
the subreaper guard of test_validation, which sees every descendant), and
nothing written where it should not be.

Small tmpfs file systems are mounted (as root) under the test's tmp_path
and unmounted in the fixture's ``finally``. Every process is tracked by the
``daemons`` fixture, or reaped by the guard, and killed by PID.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Daemons, Launch, is_alive, wait_gone, wait_until
from test_pidfile_daemon import SIMPLE_DAEMON, exit_code, guarded
from test_validation import Guarded, expect_refused, nobody, start_guarded

DAEMONKIT = [sys.executable, "-m", "daemonkit"]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount, chown, setuid)")


def dk(daemons: Daemons, *args: str | Path, timeout: float = 20.0) -> Launch:
    """``python -m daemonkit ARGS`` to its end (the process is tracked)."""
    return daemons.run([*DAEMONKIT, *map(str, args)], timeout=timeout)


def dk_guarded(daemons: Daemons, *args: str | Path, timeout: float = 20.0) -> Guarded:
    """``python -m daemonkit ARGS`` under the subreaper guard: what it left is known."""
    run = start_guarded(daemons, [*DAEMONKIT, *map(str, args)])
    return run.finish(timeout)


def assert_refused_cleanly(result: Guarded, codes: tuple[int, ...], *fragments: str) -> None:
    """A refusal: an exit status in ``codes``, one clear line, nothing left running."""
    assert result.returncode in codes, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    assert result.leftover == [], f"processes left behind: {result.leftover}"
    assert result.killed == []


def listing(folder: Path) -> list[tuple[str, int]]:
    """Names and inode numbers under ``folder``, without following symlinks."""
    return sorted((str(p.relative_to(folder)), p.lstat().st_ino) for p in folder.rglob("*"))


# -- unsafe pidfiles, through the command ---------------------------------------------

PIDFILE_CASES = {
    # case: (what to make at the path, a fragment of the message)
    "symlink": ("symlink to a precious file", "symbolic link"),
    "dangling symlink": ("symlink to a missing file", "symbolic link"),
    "fifo": ("fifo", "not a regular file"),
    "directory": ("directory", "directory"),
    "hard link": ("second name of the precious file", "hard links"),
    "open directory": ("file in a 0777 directory", "sticky"),
    "missing directory": ("file in a missing directory", "create the directory first"),
}


def make_hostile(tmp_path: Path, case: str) -> Path:
    """Put the hostile object of ``case`` in place; the pidfile path to give."""
    precious = tmp_path / "precious"
    precious.write_text("precious\n")
    path = tmp_path / "d.pid"
    if case == "symlink":
        path.symlink_to(precious)
    elif case == "dangling symlink":
        path.symlink_to(tmp_path / "created-by-the-attack")
    elif case == "fifo":
        os.mkfifo(path)
    elif case == "directory":
        path.mkdir()
    elif case == "hard link":
        os.link(precious, path)
    elif case == "open directory":
        (tmp_path / "open").mkdir()
        (tmp_path / "open").chmod(0o777)
        path = tmp_path / "open" / "d.pid"
    elif case == "missing directory":
        path = tmp_path / "missing" / "d.pid"
    return path


@pytest.mark.parametrize("case", sorted(PIDFILE_CASES))
def test_cli_refuses_an_unsafe_pidfile_before_any_fork(
    daemons: Daemons, tmp_path: Path, case: str
) -> None:
    """``start --pidfile P`` with P unsafe: exit 1 (failed to start) or 6 (bad
    configuration), one line naming P and the fix, no process started, and
    nothing written anywhere: the symlink's target, the hard link's other
    name, the fifo (never opened for writing, so no hang) and the
    directories are exactly as they were."""
    area = tmp_path / "area"
    area.mkdir()
    path = make_hostile(area, case)
    before = listing(area)
    precious = (area / "precious").stat()
    result = dk_guarded(daemons, "start", "--pidfile", path, "--", "sleep", "60")
    assert_refused_cleanly(result, (1, 6), str(path), PIDFILE_CASES[case][1])
    assert result.elapsed < 10
    assert listing(area) == before
    assert (area / "precious").read_text() == "precious\n"
    assert (area / "precious").stat().st_mtime_ns == precious.st_mtime_ns
    assert not (area / "created-by-the-attack").exists()


@pytest.mark.parametrize("case", ["dangling symlink", "fifo", "directory", "hard link"])
def test_context_refuses_an_unsafe_pidfile_before_any_fork(
    daemons: Daemons, tmp_path: Path, case: str
) -> None:
    """``DaemonContext(pidfile=PIDFile(P))``: the cases test_pidfile_daemon does
    not run through a launcher. PIDFileError in the launcher, no fork, no
    descriptor left open, nothing written."""
    area = tmp_path / "area"
    area.mkdir()
    path = make_hostile(area, case)
    before = listing(area)
    caught = expect_refused(daemons, f"pidfile=daemonkit.PIDFile({str(path)!r})")
    assert caught["type"] == "PIDFileError"
    assert str(path) in caught["message"]
    assert PIDFILE_CASES[case][1] in caught["message"]
    assert listing(area) == before
    assert (area / "precious").read_text() == "precious\n"


@needs_root
@pytest.mark.parametrize("via", ["cli", "context"])
def test_a_pidfile_on_a_read_only_mount_is_refused(
    daemons: Daemons, tmpfs: Callable[[str], Path], via: str
) -> None:
    """EROFS when creating the pidfile: refused before any fork, naming the path
    and saying the file system is read-only."""
    where = tmpfs("ro,size=64k,mode=0755")
    path = where / "d.pid"
    if via == "cli":
        result = dk_guarded(daemons, "start", "--pidfile", path, "--", "sleep", "60")
        assert_refused_cleanly(result, (1, 6), str(path), "read-only")
    else:
        caught = expect_refused(daemons, f"pidfile=daemonkit.PIDFile({str(path)!r})")
        assert caught["type"] == "PIDFileError"
        assert str(path) in caught["message"]
        assert "read-only" in caught["message"]
    assert list(where.iterdir()) == []


@needs_root
def test_cli_start_on_a_full_filesystem_fails_and_leaves_no_pidfile(
    daemons: Daemons, tmpfs: Callable[[str], Path]
) -> None:
    """tmpfs still creates an empty file when full, so the launcher's lock
    succeeds and the daemon's pid write fails (ENOSPC): the command exits 1,
    says the file system is full, and neither a process nor the pidfile is left."""
    where = tmpfs("size=64k,mode=0755")
    fill(where)
    path = where / "d.pid"
    result = dk_guarded(daemons, "start", "--pidfile", path, "--", "sleep", "60")
    assert result.returncode == 1, result.stderr
    assert str(path) in result.stderr
    assert "No space left on device" in result.stderr
    assert "full" in result.stderr
    # The daemon was forked (and is among what the guard saw) but died by itself.
    assert result.killed == [], "a process had to be killed: a half-started daemon"
    assert not path.exists()


def fill(where: Path) -> None:
    """Write zeros into ``where`` until the file system is full."""
    fd = os.open(where / "zeros", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, bytes(65536))
    except OSError as exc:
        assert exc.errno == 28  # ENOSPC
    finally:
        os.close(fd)


# -- log paths -------------------------------------------------------------------------

# A launcher script that opens DaemonContext(stdout=OUT) and says how it ended.
STREAM_LAUNCHER = """\
OUT = sys.argv[2]
try:
    with daemonkit.DaemonContext(stdout=OUT, wait_ready=True):
        facts.report(REPORT)
        daemonkit.ready()
        linger()
except daemonkit.DaemonError as exc:
    facts.report(REPORT + ".refused", type=type(exc).__name__, message=str(exc))
"""


def test_a_symlinked_log_path_is_followed_to_its_target(daemons: Daemons, tmp_path: Path) -> None:
    """Not documented either way; a log path that is an administrator's own
    symlink to a file elsewhere (/var/log/app.log -> /srv/logs/app.log) is
    legitimate: the output is appended to the target, the link stays a link."""
    target = tmp_path / "elsewhere" / "real.log"
    target.parent.mkdir()
    target.write_text("before\n")
    link = tmp_path / "app.log"
    link.symlink_to(target)
    pidfile = tmp_path / "d.pid"
    launch = dk(
        daemons, "start", "--pidfile", pidfile, "--stdout", link,
        "--", "sh", "-c", "echo from-the-daemon; exec sleep 60",
    )  # fmt: skip
    assert launch.returncode == 0, launch.stderr
    daemons.track(int(pidfile.read_text()))
    assert wait_until(lambda: target.read_text() == "before\nfrom-the-daemon\n")
    assert link.is_symlink()


@needs_root
@pytest.mark.parametrize("via", ["cli", "context"])
def test_a_log_path_in_a_world_writable_directory_is_not_an_attack_vector(
    daemons: Daemons, shared_dir: Path, via: str
) -> None:
    """The classic attack: in a directory anyone may write without the sticky
    bit, user ``nobody`` plants ``out.log -> /somewhere/root/owns``; the root
    launcher must not create or write the target. Expected: a StreamError
    naming the path (as PIDFile does for such a directory), exit 6, nothing
    created. The kernel's fs.protected_symlinks never covers non-sticky
    directories, so this is daemonkit's job."""
    user = nobody()
    open_dir = shared_dir / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    victim = shared_dir / "victim"  # root's directory: nobody could not create it
    subprocess.run(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
         "ln", "-s", str(victim), str(open_dir / "out.log")],
        check=True,
    )  # fmt: skip
    assert (open_dir / "out.log").lstat().st_uid == user.pw_uid
    if via == "cli":
        pidfile = shared_dir / "d.pid"
        launch = dk(
            daemons, "start", "--pidfile", pidfile, "--stdout", open_dir / "out.log",
            "--", "sh", "-c", "echo x; exec sleep 60",
        )  # fmt: skip
        if pidfile.exists():
            daemons.track(int(pidfile.read_text()))
        refused = launch.returncode == 6
        detail = launch.stderr
    else:
        launch, report = daemons.launch(STREAM_LAUNCHER, args=[str(open_dir / "out.log")])
        if Path(report).exists():
            daemons.read_report(report)
        refused = Path(f"{report}.refused").exists()
        detail = launch.stderr
    time.sleep(0.2)  # a daemon that was started would have written by now
    assert not victim.exists(), "root created the file the symlink points to"
    assert refused, detail
    assert str(open_dir / "out.log") in detail or via == "context"


@pytest.mark.parametrize("via", ["cli", "context"])
def test_a_fifo_log_path_does_not_hang_the_launcher(
    daemons: Daemons, tmp_path: Path, via: str
) -> None:
    """Nobody reads the fifo: opening it for writing blocks forever. The
    launcher must finish quickly (refusing it, or opening it without
    blocking), never wait for a reader that will not come."""
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    if via == "cli":
        launch = dk(daemons, "start", "--stdout", fifo, "--", "sleep", "60", timeout=5)
    else:
        launch, _ = daemons.launch(STREAM_LAUNCHER, args=[str(fifo)], timeout=5)
    assert launch.elapsed < 5
    assert stat.S_ISFIFO(fifo.stat().st_mode)


@pytest.mark.parametrize(
    ("case", "hint"),
    [("directory", "give a file, not a directory"), ("missing", "create the directory first")],
)
@pytest.mark.parametrize("option", ["--stdout", "--stderr"])
def test_cli_refuses_an_unusable_log_path_before_any_fork(
    daemons: Daemons, tmp_path: Path, case: str, hint: str, option: str
) -> None:
    """``--stdout``/``--stderr`` that is a directory, or in a missing directory:
    exit 6 (bad configuration), the option's stream and the path named with
    the fix, no process, no pidfile, nothing created."""
    area = tmp_path / "area"
    (area / "logs").mkdir(parents=True)
    path = area / "logs" if case == "directory" else area / "missing" / "out.log"
    pidfile = area / "d.pid"
    before = listing(area)
    result = dk_guarded(daemons, "start", "--pidfile", pidfile, option, path, "--", "sleep", "60")
    assert_refused_cleanly(result, (6,), option.lstrip("-"), str(path), hint)
    assert listing(area) == before


@needs_root
@pytest.mark.parametrize("via", ["cli", "context"])
@pytest.mark.parametrize(
    ("fs", "fragments"),
    [
        ("ro,size=64k,mode=0755", ["Read-only file system", "read-only"]),
        # one inode: the root directory; creating a file is ENOSPC
        ("size=64k,nr_inodes=1,mode=0755", ["No space left on device"]),
    ],
    ids=["read-only", "no-inodes"],
)
def test_a_log_path_on_an_unwritable_filesystem_is_refused(
    daemons: Daemons, tmpfs: Callable[[str], Path], tmp_path: Path, via: str, fs: str,
    fragments: list[str],
) -> None:  # fmt: skip
    """EROFS, and ENOSPC from a file system with no free inode: the stream
    path cannot be created, which the launcher reports before any fork,
    naming stdout and the path; nothing is created, no pidfile is left."""
    where = tmpfs(fs)
    path = where / "out.log"
    pidfile = tmp_path / "d.pid"
    if via == "cli":
        result = dk_guarded(
            daemons, "start", "--pidfile", pidfile, "--stdout", path, "--", "sleep", "60"
        )
        assert_refused_cleanly(result, (6,), "stdout", str(path), *fragments)
    else:
        caught = expect_refused(
            daemons, f"stdout={str(path)!r}, pidfile=daemonkit.PIDFile({str(pidfile)!r})"
        )
        assert caught["type"] == "StreamError"
        for fragment in ["stdout", str(path), *fragments]:
            assert fragment in caught["message"]
    assert list(where.iterdir()) == []
    assert not pidfile.exists()


@needs_root
def test_a_log_path_only_root_can_open_serves_a_daemon_that_drops_to_nobody(
    daemons: Daemons, shared_dir: Path
) -> None:
    """Documented: paths are opened in the launcher, before the fork and the
    privilege drop. So ``--user nobody --stdout /root-only-dir/out.log``
    works: nobody could not open the file, but writes to the descriptor it
    inherits (reopening it later is test_logfiles' business)."""
    private = shared_dir / "private"
    private.mkdir(mode=0o700)
    log = private / "out.log"
    pidfile = shared_dir / "d.pid"
    launch = dk(
        daemons, "start", "--pidfile", pidfile, "--user", "nobody", "--stdout", log,
        "--", "sh", "-c", "id -u; exec sleep 60",
    )  # fmt: skip
    assert launch.returncode == 0, launch.stderr
    pid = int(pidfile.read_text())
    daemons.track(pid)
    assert wait_until(lambda: log.exists() and log.read_text() == f"{nobody().pw_uid}\n")
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert dk(daemons, "stop", "--pidfile", pidfile).returncode == 0
    assert wait_gone(pid)


# -- the pidfile changed under a running daemon -------------------------------------------


def sabotage(path: Path, case: str, bystander: int) -> None:
    """Do ``case`` to the running daemon's pidfile ``path``."""
    folder = path.parent
    if case == "directory removed":
        path.unlink()
        folder.rmdir()
    elif case == "file removed":
        path.unlink()
    elif case == "replaced by a file naming another live process":
        fresh = folder / "fresh"
        fresh.write_text(f"{bystander}\n")
        os.replace(fresh, path)
    elif case == "replaced by a symlink":
        path.unlink()
        path.symlink_to(folder / "elsewhere")
    elif case == "replaced by a fifo":
        path.unlink()
        os.mkfifo(path)
    elif case == "directory replaced by a file":
        path.unlink()
        folder.rmdir()
        folder.write_text("not a directory\n")


def state(folder: Path) -> object:
    """What lies at ``folder``: its listing, a file's content, or None."""
    if folder.is_dir():
        return listing(folder)
    return folder.read_text() if folder.exists() else None


# case: (status exit code, status output fragment, stop exit code)
SABOTAGE = {
    "directory removed": (3, "not running", 0),
    "file removed": (3, "not running", 0),
    "replaced by a file naming another live process": (4, "does not hold", 1),
    "replaced by a symlink": (4, "unknown", 1),
    "replaced by a fifo": (4, "not a regular file", 1),
    "directory replaced by a file": (4, "Not a directory", 1),
}


@pytest.mark.parametrize("case", sorted(SABOTAGE))
def test_status_and_stop_after_the_pidfile_changed_under_the_daemon(
    daemons: Daemons, tmp_path: Path, case: str
) -> None:
    """The pidfile (or its directory) is removed or replaced while the daemon
    runs. ``status`` and ``stop`` report what they find (LSB codes, one
    line, no traceback, no hang on the fifo) and never signal anything: not
    the daemon they can no longer see, not a bystander whose pid was
    written in. The daemon still exits 0 on SIGTERM, and its exit does not
    touch what now lies at the path."""
    folder = tmp_path / "run"
    folder.mkdir()
    path = folder / "d.pid"
    bystander = subprocess.Popen(["sleep", "60"])
    daemons.track(bystander.pid)
    run, report = guarded(daemons, SIMPLE_DAEMON, str(path))
    pid = daemons.read_report(report)["pid"]
    assert wait_until(lambda: path.exists() and path.read_text() == f"{pid}\n")
    sabotage(path, case, bystander.pid)
    snapshot = state(folder)
    code, fragment, stop_code = SABOTAGE[case]
    for action, expected in (("status", code), ("stop", stop_code)):
        launch = dk(daemons, action, "--pidfile", path, timeout=10)
        assert launch.returncode == expected, (action, launch.stdout, launch.stderr)
        assert "Traceback" not in launch.stderr, launch.stderr
        if action == "status":
            assert fragment in launch.stdout, launch.stdout
        assert launch.elapsed < 5
    assert is_alive(pid), "the daemon was signalled"
    assert bystander.poll() is None, "the bystander was signalled"
    os.kill(pid, signal.SIGTERM)
    assert exit_code(run, pid) == 0
    assert state(folder) == snapshot
    if case == "replaced by a file naming another live process":
        assert path.read_text() == f"{bystander.pid}\n"
    if case == "directory removed":
        assert not folder.exists(), "the daemon recreated the directory"
    bystander.kill()
    bystander.wait()


# -- a full file system while the daemon runs -------------------------------------------------

# argv: REPORT LOG ERRORS. Writes numbered lines to stdout (LOG) until SIGTERM.
WRITER = """\
LOG, ERRORS = sys.argv[2], sys.argv[3]
with daemonkit.DaemonContext(stdout=LOG, stderr=ERRORS, wait_ready=True):
    facts.report(REPORT)
    daemonkit.ready()
    number = 0
    while True:
        number += 1
        print(number, flush=True)
        time.sleep(0.01)
"""


@needs_root
def test_reopen_on_a_full_filesystem_keeps_the_old_file_and_warns(
    daemons: Daemons, tmpfs: Callable[[str], Path], tmp_path: Path
) -> None:
    """README (log files): "a file it cannot reopen keeps receiving output in
    the old file, and a line on stderr says so". Here the log's file system
    has no free inode: after logrotate's rename, SIGHUP cannot create the new
    file (ENOSPC). The daemon survives the signal, keeps writing to the
    renamed file, warns once per failed reopening on stderr, and still exits
    0 on SIGTERM."""
    where = tmpfs("size=1m,nr_inodes=2,mode=0755")  # the root directory + one file
    log = where / "out.log"
    errors_log = tmp_path / "errors.log"
    run, report = guarded(daemons, WRITER, str(log), str(errors_log))
    pid = daemons.read_report(report)["pid"]
    assert wait_until(lambda: log.exists() and log.stat().st_size > 0)
    rotated = where / "out.log.1"
    os.rename(log, rotated)
    os.kill(pid, signal.SIGHUP)
    assert wait_until(lambda: "cannot reopen" in errors_log.read_text()), errors_log.read_text()
    warning = errors_log.read_text()
    assert str(log) in warning
    assert "No space left on device" in warning
    assert "old file" in warning
    assert is_alive(pid)
    size = rotated.stat().st_size
    assert wait_until(lambda: rotated.stat().st_size > size), "output stopped"
    assert not log.exists()
    # A second rotation signal: same warning, still alive.
    os.kill(pid, signal.SIGHUP)
    assert wait_until(lambda: errors_log.read_text().count("cannot reopen") == 2)
    assert is_alive(pid)
    numbers = [int(line) for line in rotated.read_text().split()]
    assert numbers == list(range(1, len(numbers) + 1)), "lines lost or repeated"
    os.kill(pid, signal.SIGTERM)
    assert exit_code(run, pid) == 0
    assert "Traceback" not in errors_log.read_text()
