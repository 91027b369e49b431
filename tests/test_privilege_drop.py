"""Privilege drop, file ownership and modes, seen from the kernel (DESIGN §3, §8).

test_privileges covers the library's uid/gid/groups switch, CapEff and the
failed attempts to regain root. Added here:

- the ``daemonkit start --user nobody`` path, and all of ``/proc/PID/status``
  for both paths: the four Uid/Gid fields, no supplementary groups, and
  CapInh/CapPrm/CapEff/CapAmb all zero, plus setresuid/setresgid/setegid;
- the owner and mode of every file daemonkit creates (pidfile, ``stdout=``/
  ``stderr=`` paths, the CLI's ``--stdout``/``--stderr``) when the launching
  process runs with umask 0: the pidfile is 0644 whatever the umask
  (pidfile.MODE), stream files ``0o664 & ~umask`` with the *daemon's* umask
  (streams.py; default 022), so nothing is group- or world-writable;
- what a hostile unprivileged user can do to a root daemon's files: a
  pre-existing world-writable log file or pidfile, a log path replaced by a
  symlink in a directory the daemon's user owns, a lock taken on a stale
  root-owned pidfile (these are findings, marked xfail);
- the non-root path through the CLI: a user starts and stops its own daemon
  with its own pidfile, and ``--user root`` is refused before any fork.

Unprivileged actors are launcher scripts that start as root and drop to
``nobody`` with setresuid before acting (test_validation.drop_to_nobody).
Every process is tracked by pid and killed at teardown.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemons, Launch, is_alive, read_json, wait_gone, wait_until
from test_validation import PREIMPORTS, drop_to_nobody, nobody, start_guarded

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="privilege changes need root")

DAEMONKIT = [sys.executable, "-m", "daemonkit"]
EPERM = errno.EPERM

# The daemon's program (CLI: exec'd; library: run inside the with block).
# argv: OUT. Reports /proc/self/status before and after trying to regain root.
PROGRAM = """\
import json, os, sys, time
OUT = sys.argv[1]
KEYS = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def status():
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return {key: fields.get(key) for key in KEYS}


def attempt(function, *args):
    try:
        function(*args)
    except OSError as exc:
        return exc.errno
    return 0


before = status()
regain = {
    "setuid": attempt(os.setuid, 0),
    "seteuid": attempt(os.seteuid, 0),
    "setresuid": attempt(os.setresuid, 0, 0, 0),
    "setgid": attempt(os.setgid, 0),
    "setegid": attempt(os.setegid, 0),
    "setresgid": attempt(os.setresgid, 0, 0, 0),
    "setgroups": attempt(os.setgroups, [0]),
}
print("to stdout", flush=True)
print("to stderr", file=sys.stderr, flush=True)
with open(OUT + ".tmp", "w") as out:
    json.dump({"pid": os.getpid(), "before": before, "after": status(), "regain": regain}, out)
os.rename(OUT + ".tmp", OUT)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    time.sleep(0.05)
"""

CAPS = ("CapInh", "CapPrm", "CapEff", "CapAmb")


@pytest.fixture
def area() -> Iterator[Path]:
    """A scratch directory other users can reach (tmp_path's parents are root-only).

    Inside: ``run`` and ``logs`` (root's, 0755) and ``open`` (0777, for reports).
    """
    folder = Path(tempfile.mkdtemp(prefix="dk-priv-"))
    try:
        folder.chmod(0o755)
        (folder / "run").mkdir(mode=0o755)
        (folder / "logs").mkdir(mode=0o755)
        (folder / "open").mkdir()
        (folder / "open").chmod(0o777)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def dk(daemons: Daemons, *args: str | Path, umask: int | None = None) -> Launch:
    """``python -m daemonkit ARGS`` as root, with the given process umask."""
    preexec = None if umask is None else (lambda: os.umask(umask))
    return daemons.run([*DAEMONKIT, *map(str, args)], timeout=30, preexec_fn=preexec)


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def program_file(area: Path) -> Path:
    path = area / "open" / "program.py"
    path.write_text(PROGRAM)
    path.chmod(0o644)
    return path


def python_for_nobody() -> str:
    """An interpreter ``nobody`` can execute (the CLI execs it as nobody); else skip.

    This one may live under /root (a pyenv build): then the system's python3.
    """
    user = nobody()

    def drop() -> None:
        os.setgroups([])
        os.setresgid(user.pw_gid, user.pw_gid, user.pw_gid)
        os.setresuid(user.pw_uid, user.pw_uid, user.pw_uid)

    for candidate in (sys.executable, "/usr/bin/python3"):
        try:
            check = subprocess.run(
                [candidate, "-c", "import json, os, sys, time"],
                preexec_fn=drop,
                capture_output=True,
                timeout=30,
                cwd="/",
            )
        except OSError:
            continue
        if check.returncode == 0:
            return candidate
    pytest.skip("nobody cannot execute any Python interpreter here")


def assert_mode(path: Path, uid: int, mode: int) -> None:
    st = path.lstat()
    assert stat.S_ISREG(st.st_mode), path
    assert (st.st_uid, oct(stat.S_IMODE(st.st_mode))) == (uid, oct(mode)), path


def start_dropped(daemons: Daemons, area: Path, how: str) -> tuple[dict[str, Any], int]:
    """Start PROGRAM as ``nobody`` by the CLI or the library, the launcher at umask 0.

    Returns the program's report and its pid (tracked).
    """
    program = program_file(area)
    report = area / "open" / "report.json"
    pidfile, out, err = area / "run" / "d.pid", area / "logs" / "out.log", area / "logs" / "err.log"
    if how == "cli":
        python = python_for_nobody()
        launch = dk(
            daemons,
            "start",
            "--user",
            "nobody",
            "--pidfile",
            pidfile,
            "--stdout",
            out,
            "--stderr",
            err,
            "--",
            python,
            program,
            report,
            umask=0,
        )
    else:
        body = f"""\
os.umask(0)
os.setgroups([0, 4, 6])  # supplementary groups the daemon must not keep
with daemonkit.DaemonContext(
    uid="nobody", pidfile=daemonkit.PIDFile({str(pidfile)!r}),
    stdout={str(out)!r}, stderr={str(err)!r},
):
    sys.argv = ["program", {str(report)!r}]
    exec(compile(open({str(program)!r}).read(), "program", "exec"))
"""
        launch, _ = daemons.launch(body)
    assert launch.returncode == 0, launch.stderr
    data = daemons.read_report(report)
    return data, data["pid"]


@pytest.mark.parametrize("how", ["cli", "library"])
def test_a_dropped_daemon_has_no_way_back_to_root(daemons: Daemons, area: Path, how: str) -> None:
    """As root, ``--user nobody`` / ``uid="nobody"``: every uid and gid is
    nobody's (real, effective, saved, filesystem), no supplementary groups,
    no capabilities in the inheritable, permitted, effective or ambient
    sets, and setuid/seteuid/setresuid/setgid/setegid/setresgid/setgroups
    to root all fail with EPERM (and change nothing)."""
    user = nobody()
    data, pid = start_dropped(daemons, area, how)
    uid, gid = user.pw_uid, user.pw_gid
    for view in (data["before"], data["after"], proc_status(pid)):
        assert view["Uid"].split() == [str(uid)] * 4, view
        assert view["Gid"].split() == [str(gid)] * 4, view
        assert view["Groups"] == "", view
        for cap in CAPS:
            assert int(view[cap], 16) == 0, (cap, view)
    assert data["regain"] == dict.fromkeys(data["regain"], EPERM)
    assert len(data["regain"]) == 7


@pytest.mark.parametrize("how", ["cli", "library"])
def test_files_created_at_launcher_umask_0_are_not_writable_by_others(
    daemons: Daemons, area: Path, how: str
) -> None:
    """The launching process runs with umask 0, the daemon as nobody.

    The pidfile (created by the root launcher) is root's and 0644
    (pidfile.MODE, whatever the umask); the log files are root's and 0644
    (``0o664 & ~umask`` with the daemon's default umask 022, not the
    launcher's 0); the dropped daemon still writes to all of them through
    the descriptors it inherited. No file in the run and log directories is
    group- or world-writable.
    """
    _, pid = start_dropped(daemons, area, how)
    pidfile, out, err = area / "run" / "d.pid", area / "logs" / "out.log", area / "logs" / "err.log"
    assert_mode(pidfile, 0, 0o644)
    assert pidfile.read_text() == f"{pid}\n"
    for log in (out, err):
        assert_mode(log, 0, 0o644)
    assert wait_until(lambda: "to stdout" in out.read_text() and "to stderr" in err.read_text())
    made = [path for folder in ("run", "logs") for path in (area / folder).iterdir()]
    assert sorted(path.name for path in made) == ["d.pid", "err.log", "out.log"]
    for path in made:
        assert not stat.S_IMODE(path.lstat().st_mode) & 0o022, path
    status = dk(daemons, "status", "--pidfile", pidfile)
    assert (status.returncode, f"running (pid {pid}" in status.stdout) == (0, True), status
    if how == "cli":
        stopped = dk(daemons, "stop", "--pidfile", pidfile)
        assert stopped.returncode == 0, stopped.stderr
        assert not pidfile.exists()
    else:
        os.kill(pid, 15)
        assert wait_gone(pid)
        # nobody cannot unlink in root's 0755 run directory: emptied, unlocked.
        assert pidfile.read_text() == ""
        assert_mode(pidfile, 0, 0o644)


def test_an_explicit_umask_0_keeps_the_pidfile_0644_and_is_applied_to_logs(
    daemons: Daemons, area: Path
) -> None:
    """``start --umask 000``: the pidfile stays 0644 (fixed mode); the log
    files follow the daemon's umask (``0o664 & ~umask``, streams.py and
    test_streams) but are never writable by everyone: 0664 here."""
    pidfile, out = area / "run" / "d.pid", area / "logs" / "out.log"
    launch = dk(
        daemons, "start", "--umask", "000", "--pidfile", pidfile, "--stdout", out, "--",
        "sleep", "300",
    )  # fmt: skip
    assert launch.returncode == 0, launch.stderr
    daemons.track(int(pidfile.read_text()))
    assert_mode(pidfile, 0, 0o644)
    assert_mode(out, 0, 0o664)
    assert dk(daemons, "stop", "--pidfile", pidfile).returncode == 0


def test_a_world_writable_log_file_is_not_used_silently(daemons: Daemons, area: Path) -> None:
    """A root daemon's log file that anyone may write (0666, left by some
    earlier tool) lets any user forge or erase its log lines. daemonkit
    refuses world-writable pidfile directories; for the log file it should
    at least say so: asserted, the launcher's stderr names the file and says
    it is writable (a refusal or a warning both do)."""
    pidfile, out = area / "run" / "d.pid", area / "logs" / "out.log"
    out.touch()
    out.chmod(0o666)
    launch = dk(daemons, "start", "--pidfile", pidfile, "--stdout", out, "--", "sleep", "300")
    if pidfile.exists() and pidfile.read_text().strip():
        daemons.track(int(pidfile.read_text()))
    assert str(out) in launch.stderr and "writable" in launch.stderr, launch


def test_a_symlinked_log_path_does_not_reach_roots_files(daemons: Daemons, area: Path) -> None:
    """The log directory belongs to the daemon's user (so it can create files
    after rotation, as README's logrotate example needs). A compromised
    daemon replaces ``out.log`` by a symlink to a root-only file; the next
    start (as root, ``--user nobody``) must not open that file for its
    output. Asserted: the root file is unchanged, whether start refuses
    the symlink or not."""
    user = nobody()
    logs = area / "logs"
    os.chown(logs, user.pw_uid, user.pw_gid)
    secret = area / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    (logs / "out.log").symlink_to(secret)
    os.lchown(logs / "out.log", user.pw_uid, user.pw_gid)
    pidfile = area / "run" / "d.pid"
    launch = dk(
        daemons, "start", "--user", "nobody", "--pidfile", pidfile, "--stdout", logs / "out.log",
        "--", "sh", "-c", "echo written by the daemon; exec sleep 300",
    )  # fmt: skip
    if launch.returncode == 0:
        pid = int(pidfile.read_text())
        daemons.track(pid)
        assert wait_until(lambda: not is_alive(pid) or proc_status(pid)["Name"] == "sleep")
    assert secret.read_text() == "root only\n", launch
    assert_mode(secret, 0, 0o600)


# An unprivileged actor. argv: REPORT PIDFILE ACTION(rewrite|lock)
ACTOR = (
    PREIMPORTS
    + drop_to_nobody()
    + """\
import fcntl
PIDFILE, ACTION = sys.argv[2], sys.argv[3]
got = []
for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGUSR1):
    signal.signal(sig, lambda signum, frame: got.append(signum))
result = {"pid": os.getpid(), "uid": os.getuid()}
try:
    if ACTION == "rewrite":
        fd = os.open(PIDFILE, os.O_RDWR)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
    else:
        fd = os.open(PIDFILE, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    result["done"] = True
except OSError as exc:
    result["done"] = False
    result["error"] = exc.strerror
with open(REPORT + ".tmp", "w") as out:
    json.dump(result, out)
os.rename(REPORT + ".tmp", REPORT)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    time.sleep(0.05)
    if got:
        with open(REPORT + ".signals", "a") as out:
            out.write("".join(f"{signum}\\n" for signum in got))
        got.clear()
"""
)


def start_actor(daemons: Daemons, area: Path, pidfile: Path, action: str) -> dict[str, Any]:
    script = daemons.script(ACTOR)
    report = area / "open" / f"actor_{action}.json"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(report), str(pidfile), action],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    daemons.track(proc.pid)
    data = read_json(report)
    assert data["uid"] == nobody().pw_uid
    return data


def test_a_world_writable_pidfile_cannot_redirect_stop(daemons: Daemons, area: Path) -> None:
    """A pidfile left 0666 by an earlier tool, in root's 0755 run directory.

    daemonkit refuses hard links and files owned by others, but keeps this
    one as it is. ``nobody`` then writes its own pid into it (keeping it
    open, so the "has the file open" check passes). Asserted: either start
    refused the file, or the pidfile became unwritable for nobody, or, if
    nobody could rewrite it, root's status and stop still act on the real
    daemon and never signal nobody's process.
    """
    pidfile = area / "run" / "d.pid"
    pidfile.touch()
    pidfile.chmod(0o666)
    launch = dk(daemons, "start", "--pidfile", pidfile, "--", "sleep", "300")
    if launch.returncode != 0:
        assert "writable" in launch.stderr, launch
        return
    daemon = int(pidfile.read_text())
    daemons.track(daemon)
    actor = start_actor(daemons, area, pidfile, "rewrite")
    if not actor["done"]:
        assert not stat.S_IMODE(pidfile.stat().st_mode) & 0o022
        return
    status = dk(daemons, "status", "--pidfile", pidfile)
    stopped = dk(daemons, "stop", "--pidfile", pidfile, "--timeout", "2")
    signals = area / "open" / "actor_rewrite.json.signals"
    time.sleep(0.2)
    assert not signals.exists(), f"nobody's process got {signals.read_text()!r}; {stopped}"
    assert f"running (pid {daemon}" in status.stdout, status
    assert stopped.returncode == 0 and not is_alive(daemon), stopped


def test_a_lock_taken_by_another_user_on_a_stale_pidfile(daemons: Daemons, area: Path) -> None:
    """A platform limit, documented (README, Reliability): ``flock`` needs
    only read access, so a user who can open the pidfile can hold its lock.

    A root daemon is ``kill -9``-ed; its pidfile (root's, 0644, as
    documented) stays in root's 0755 run directory. ``nobody`` opens it
    read-only and takes the flock. Asserted, the documented behaviour:
    status does not call anything running (exit 1, "dead") and names the
    process that holds the lock; start refuses (exit 1) naming it, instead
    of claiming the dead daemon is "already running"; nothing is signalled;
    once that process is gone, start works. The documented remedy, a
    directory other users cannot enter, keeps nobody from opening the file.
    """
    pidfile = area / "run" / "d.pid"
    launch = dk(daemons, "start", "--pidfile", pidfile, "--", "sleep", "300")
    assert launch.returncode == 0, launch.stderr
    first = int(pidfile.read_text())
    daemons.track(first)
    os.kill(first, 9)
    assert wait_gone(first)
    actor = start_actor(daemons, area, pidfile, "lock")
    assert actor["done"], actor  # nobody holds the lock now
    status = dk(daemons, "status", "--pidfile", pidfile)
    refused = dk(daemons, "start", "--pidfile", pidfile, "--", "sleep", "300")
    assert status.returncode == 1, status
    assert f"pid {actor['pid']}" in status.stdout, status
    assert refused.returncode == 1, refused
    assert f"pid {actor['pid']}" in refused.stderr, refused
    assert "already running" not in refused.stderr, refused
    signals = area / "open" / "actor_lock.json.signals"
    assert not signals.exists()
    os.kill(actor["pid"], signal.SIGKILL)
    assert wait_gone(actor["pid"])
    again = dk(daemons, "start", "--pidfile", pidfile, "--", "sleep", "300")
    new = int(pidfile.read_text())
    daemons.track(new)
    assert again.returncode == 0, again
    assert new != first and is_alive(new)
    # The remedy: in a directory nobody cannot enter, nobody cannot open it.
    (area / "run").chmod(0o700)
    blocked = start_actor(daemons, area, pidfile, "lock-again")
    assert not blocked["done"], blocked
    assert proc_status(new)["Name"] == "sleep"


# -- as an ordinary user, through the CLI ------------------------------------

# A launcher that drops to nobody, then runs the daemonkit command line.
# argv: REPORT ARGS_JSON. Writes {"code", "forks"} if main() returns.
CLI_AS_NOBODY = (
    PREIMPORTS
    # What the command line imports lazily, imported while the interpreter's
    # own files are still readable (they may not be for nobody).
    + "import argparse, gettext, importlib, locale, pkgutil, shutil, daemonkit.cli\n"
    + "for found in pkgutil.iter_modules(daemonkit.__path__):\n"
    + "    if found.name != '__main__':\n"
    + "        importlib.import_module('daemonkit.' + found.name)\n"
    + "daemonkit.cli.build_parser().parse_args(['status', '--pidfile', 'x'])\n"
    + drop_to_nobody()
    + """\
FORKS = []
os.register_at_fork(before=lambda: FORKS.append(1))
code = daemonkit.cli.main(json.loads(sys.argv[2]))
with open(REPORT, "w") as out:
    json.dump({"code": code, "forks": len(FORKS)}, out)
sys.exit(code)
"""
)


def cli_as_nobody(daemons: Daemons, area: Path, *args: str | Path) -> tuple[Launch, Path]:
    """Run the CLI in a launcher that dropped to nobody; return how it ended and its report."""
    report = area / "open" / f"cli_{time.monotonic_ns()}.json"
    script = daemons.script(CLI_AS_NOBODY)
    launch = daemons.run([sys.executable, str(script), str(report), json.dumps([*map(str, args)])])
    return launch, report


def own_dir(area: Path) -> Path:
    user = nobody()
    mine = area / "nobody"
    mine.mkdir(mode=0o755)
    os.chown(mine, user.pw_uid, user.pw_gid)
    return mine


def test_an_ordinary_user_starts_and_stops_its_own_daemon(daemons: Daemons, area: Path) -> None:
    """nobody runs ``daemonkit start --pidfile OWN/d.pid --stdout OWN/out.log``
    in a directory it owns: it works, both files are nobody's and 0644, the
    daemon runs as nobody, and nobody's ``stop`` stops it and removes the
    pidfile."""
    user = nobody()
    mine = own_dir(area)
    pidfile, out = mine / "d.pid", mine / "out.log"
    launch, _ = cli_as_nobody(
        daemons, area, "start", "--pidfile", pidfile, "--stdout", out, "--", "sleep", "300"
    )
    assert launch.returncode == 0, launch.stderr
    pid = int(pidfile.read_text())
    daemons.track(pid)
    assert proc_status(pid)["Uid"].split() == [str(user.pw_uid)] * 4
    assert proc_status(pid)["Name"] == "sleep"
    assert_mode(pidfile, user.pw_uid, 0o644)
    assert_mode(out, user.pw_uid, 0o644)
    status = dk(daemons, "status", "--pidfile", pidfile)
    assert status.returncode == 0 and f"running (pid {pid}" in status.stdout, status
    stopped, _ = cli_as_nobody(daemons, area, "stop", "--pidfile", pidfile)
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped (pid {pid}" in stopped.stderr
    assert wait_gone(pid)
    assert not pidfile.exists()


@pytest.mark.parametrize("option", [("--user", "root"), ("--user", "0"), ("--group", "root")])
def test_an_ordinary_user_asking_for_root_is_refused_before_any_fork(
    daemons: Daemons, area: Path, option: tuple[str, str]
) -> None:
    """nobody runs ``daemonkit start --user root`` (or uid 0, or group root).

    Asserted: exit 1 (start failed), one line saying what needs root, no
    fork attempted, no process left (the subreaper guard saw none), and
    neither the pidfile nor the log file left behind."""
    mine = own_dir(area)
    pidfile, out = mine / "d.pid", mine / "out.log"
    report = area / "open" / "refused.json"
    script = daemons.script(CLI_AS_NOBODY)
    args = ["start", *option, "--pidfile", str(pidfile), "--stdout", str(out), "--", "sleep", "300"]
    run = start_guarded(daemons, [sys.executable, str(script), str(report), json.dumps(args)])
    result = run.finish(timeout=30)
    data = json.loads(report.read_text())
    assert data == {"code": 1, "forks": 0}, (data, result.stderr)
    assert result.returncode == 1
    assert result.leftover == [] and result.killed == [], result
    assert "needs root" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(os.listdir(mine)) == []
