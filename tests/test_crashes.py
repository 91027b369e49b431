"""``kill -9`` at each stage of a start, of each of the three processes (§8).

A daemon killed at any point of its startup makes the launcher exit 1 at
once, naming the daemon's pid and SIGKILL; nothing it leaves (a pidfile, a
lock) blocks the next start, and ``status`` tells the truth in between. A
killed launcher or intermediate process leaves the daemon consistent and
nobody hanging.

The stages are hit deterministically: the daemon stops itself (SIGSTOP,
which no mask blocks) at the stage, after writing its pid to a file; the
test checks ``status`` there, then kills it with SIGKILL. The hooks are the
daemon's own code (a foreign lockfile-style pidfile object, an
``os.register_at_fork`` hook, the ``with`` body), or, for ``python -m
daemonkit start``, a ``sitecustomize`` module on ``PYTHONPATH``. Every pid
is tracked by the ``daemons`` fixture as soon as it is known.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemons, clean_env, is_alive, parent_of, wait_gone, wait_until
from test_cli import DAEMONKIT, dk, processes_running

from daemonkit import control
from daemonkit.pidfile import PIDStatus

pytestmark = pytest.mark.timeout(60)


def state_of(pid: int) -> str | None:
    """The process state letter of ``pid`` (``T``: stopped), None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def halted_pid(daemons: Daemons, stage_file: Path) -> int:
    """The pid a process wrote to ``stage_file`` before it stopped itself; tracked."""
    assert wait_until(stage_file.exists, 15), f"nobody reached the stage ({stage_file})"
    pid = int(stage_file.read_text().split()[0])
    daemons.track(pid)
    assert wait_until(lambda: state_of(pid) == "T", 10), state_of(pid)
    return pid


def finish(proc: subprocess.Popen[str], timeout: float = 20.0) -> tuple[int, str, float]:
    """Exit code, stderr and seconds taken from now; fails fast on a hang."""
    began = time.monotonic()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"{proc.args!r} hung for {timeout} s after the kill; stderr: {err!r}")
    return proc.returncode, err, time.monotonic() - began


def popen(daemons: Daemons, command: list[str], env: dict[str, str] | None = None) -> Any:
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=daemons.tmp_path,
        env=env,
    )
    daemons.track(proc.pid)
    return proc


def assert_reports_sigkill(code: int, err: str, pid: int, elapsed: float) -> None:
    """The launcher exits 1 promptly, naming the daemon's pid and SIGKILL."""
    assert code == 1, err
    assert f"pid {pid}" in err, err
    assert "SIGKILL" in err, err
    assert "Traceback" not in err, err
    assert elapsed < 5, f"the launcher took {elapsed:.1f} s to notice"


def assert_not_running(path: Path) -> None:
    found = control.status(path)
    assert (found.code, found.state) == (3, PIDStatus.ABSENT), (found.state, found.pid)
    assert not path.exists()


# -- the library: DaemonContext(pidfile=PIDFile(P), wait_ready=True) --------------

# argv: REPORT PIDFILE STAGE_FILE STAGE
STAGED = """\
PATH, STAGE_FILE, STAGE = sys.argv[2], sys.argv[3], sys.argv[4]
LAUNCHER = os.getpid()


def halt(stage):
    with open(STAGE_FILE + ".tmp", "w") as out:
        out.write(f"{os.getpid()} {stage}")
    os.rename(STAGE_FILE + ".tmp", STAGE_FILE)
    os.kill(os.getpid(), signal.SIGSTOP)


class HaltingPidfile:
    # A foreign lockfile-style object: entered in the daemon, after the forks.
    def __init__(self, path):
        self.real = daemonkit.PIDFile(path)

    def __enter__(self):
        halt("before-lock")
        self.real.acquire()
        return self

    def __exit__(self, *exc_info):
        self.real.release()


if STAGE == "after-fork":  # in the daemon (its parent is not the launcher), not yet written
    os.register_at_fork(after_in_child=lambda: os.getppid() != LAUNCHER and halt(STAGE))
pidfile = HaltingPidfile(PATH) if STAGE == "before-lock" else daemonkit.PIDFile(PATH)
with daemonkit.DaemonContext(pidfile=pidfile, wait_ready=True, ready_timeout=30):
    if STAGE == "before-ready":
        halt(STAGE)
    facts.report(REPORT)
    daemonkit.ready()
    linger()
"""

# What status says while the daemon is halted at each stage.
STATUS_AT = {
    "before-lock": (PIDStatus.ABSENT, False),  # a foreign pidfile: nothing locked yet
    "after-fork": (PIDStatus.STARTING, False),  # locked (handed down), no pid written
    "before-ready": (PIDStatus.RUNNING, True),  # locked, its pid written
}


@pytest.mark.parametrize("stage", list(STATUS_AT))
def test_kill_9_of_the_daemon_at_each_stage_of_its_start(
    daemons: Daemons, tmp_path: Path, stage: str
) -> None:
    """SIGKILL before the lock, after the fork (lock held, no pid), before ready.

    The launcher exits 1 at once naming the pid and SIGKILL; the pidfile is
    gone (removed by the launcher, which shared the dead daemon's lock) so
    status says "not running"; the next start, with no cleanup, works.
    """
    path = tmp_path / "d.pid"
    script = daemons.script(STAGED)
    stage_file = tmp_path / "stage"
    report = tmp_path / "report.json"
    launcher = popen(
        daemons, [sys.executable, str(script), str(report), str(path), str(stage_file), stage]
    )
    pid = halted_pid(daemons, stage_file)
    found = control.status(path)
    state, names_pid = STATUS_AT[stage]
    assert (found.state, found.pid) == (state, pid if names_pid else None)
    assert launcher.poll() is None
    os.kill(pid, signal.SIGKILL)
    code, err, elapsed = finish(launcher)
    assert_reports_sigkill(code, err, pid, elapsed)
    assert "before it was ready" in err, err
    assert wait_gone(pid, 5.0)
    assert_not_running(path)

    launch, report = daemons.launch(STAGED, args=[str(path), str(tmp_path / "none"), "none"])
    assert launch.returncode == 0, launch.stderr
    second = daemons.read_report(report)["pid"]
    assert control.status(path).pid == second
    assert path.read_text() == f"{second}\n"
    assert dk(daemons, "stop", "--pidfile", path).returncode == 0
    assert wait_gone(second, 5.0)
    assert_not_running(path)


# argv: REPORT PIDFILE GO THEN (ready | fail | die)
WAITS_FOR_GO = """\
PATH, GO, THEN = sys.argv[2], sys.argv[3], sys.argv[4]
with daemonkit.DaemonContext(pidfile=daemonkit.PIDFile(PATH), wait_ready=True, ready_timeout=30):
    facts.report(REPORT)
    deadline = time.monotonic() + 30
    while not os.path.exists(GO):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    if THEN == "fail":
        raise RuntimeError("the daemon failed after its launcher was gone")
    if THEN == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    daemonkit.ready("up")
    facts.report(REPORT + ".after")
    linger()
"""


@pytest.mark.parametrize("then", ["ready", "fail"])
def test_kill_9_of_the_launcher_while_it_waits(daemons: Daemons, tmp_path: Path, then: str) -> None:
    """The launcher dies while its daemon is not ready yet.

    The daemon carries on: ``ready()`` with nobody listening neither blocks
    nor kills it (no SIGPIPE), and status tells the truth before and after;
    a daemon that then fails leaves no pidfile. Nothing hangs.
    """
    path = tmp_path / "d.pid"
    go = tmp_path / "go"
    script = daemons.script(WAITS_FOR_GO)
    report = tmp_path / "report.json"
    launcher = popen(daemons, [sys.executable, str(script), str(report), str(path), str(go), then])
    pid = daemons.read_report(report)["pid"]
    assert (control.status(path).state, control.status(path).pid) == (PIDStatus.RUNNING, pid)
    launcher.kill()
    launcher.communicate(timeout=10)
    assert launcher.returncode == -signal.SIGKILL
    middle_gone = wait_until(lambda: parent_of(pid) != launcher.pid and not is_alive(launcher.pid))
    assert middle_gone
    assert control.status(path).pid == pid, "the daemon holds its lock without its launcher"
    go.touch()
    if then == "ready":
        after = daemons.read_report(Path(f"{report}.after"))
        assert after["pid"] == pid
        assert is_alive(pid)
        found = control.status(path)
        assert (found.state, found.pid) == (PIDStatus.RUNNING, pid)
        stopped = dk(daemons, "stop", "--pidfile", path)
        assert stopped.returncode == 0, stopped.stderr
    assert wait_gone(pid, 5.0)
    assert_not_running(path)


def middle_of(daemons: Daemons, pid: int) -> int:
    """The daemon's parent, the double fork's intermediate process (tracked)."""
    middle = parent_of(pid)
    assert middle is not None and middle != 1
    daemons.track(middle)
    return middle


@pytest.mark.parametrize("then", ["ready", "die"])
def test_kill_9_of_the_intermediate_process_while_the_launcher_waits(
    daemons: Daemons, tmp_path: Path, then: str
) -> None:
    """The intermediate process is killed; the launcher waits on regardless.

    If the daemon then becomes ready the launcher exits 0 at once; if it
    dies, the launcher exits 1 at once naming its pid (its wait status died
    with its parent, so "exited" is all it can say), and no pidfile is left.
    """
    path = tmp_path / "d.pid"
    go = tmp_path / "go"
    script = daemons.script(WAITS_FOR_GO)
    report = tmp_path / "report.json"
    launcher = popen(daemons, [sys.executable, str(script), str(report), str(path), str(go), then])
    pid = daemons.read_report(report)["pid"]
    middle = middle_of(daemons, pid)
    os.kill(middle, signal.SIGKILL)
    assert wait_gone(middle, 5.0)
    time.sleep(0.2)
    assert launcher.poll() is None, "the launcher gave up on a daemon that is still starting"
    go.touch()
    code, err, elapsed = finish(launcher)
    assert "Traceback" not in err, err
    assert elapsed < 5, elapsed
    if then == "ready":
        assert code == 0, err
        assert control.status(path).pid == pid
        assert dk(daemons, "stop", "--pidfile", path).returncode == 0
    else:
        assert code == 1, err
        assert f"pid {pid}" in err and "before it was ready" in err, err
    assert wait_gone(pid, 5.0)
    assert_not_running(path)


# -- the command: python -m daemonkit start ------------------------------------------

# Loaded by every Python process of a ``start`` (PYTHONPATH): halts the daemon
# right after the second fork (lock held, no pid yet) or just before it execs
# the program (pid written, handlers installed).
SITECUSTOMIZE = """\
import os, signal
_stage = os.environ.pop("DKTEST_HALT", None)
if _stage:
    _file = os.environ.pop("DKTEST_STAGE_FILE")
    _launcher = os.getpid()

    def _halt():
        with open(_file + ".tmp", "w") as out:
            out.write(str(os.getpid()))
        os.rename(_file + ".tmp", _file)
        os.kill(os.getpid(), signal.SIGSTOP)

    if _stage == "after-fork":
        os.register_at_fork(after_in_child=lambda: os.getppid() != _launcher and _halt())
    else:
        _execve = os.execve

        def _halting_execve(*args):
            _halt()
            return _execve(*args)

        os.execve = _halting_execve
"""

# Never says READY=1: started with --notify it is "starting" until killed. argv: PIDOUT
NEVER_READY = """\
import os, sys, time
with open(sys.argv[1] + ".tmp", "w") as out:
    out.write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(60)
"""


def marker(tag: int) -> list[str]:
    return ["sleep", f"42.{os.getpid() % 1000:03d}{tag:03d}"]


def start_again_works(daemons: Daemons, path: Path, tag: int) -> None:
    """A plain ``start`` on the same pidfile, no cleanup first: it runs, then stops."""
    argv = marker(tag)
    launch = dk(daemons, "start", "--pidfile", path, "--", *argv)
    assert launch.returncode == 0, launch.stderr
    assert "already running" not in launch.stderr, launch.stderr
    assert wait_until(lambda: processes_running(argv) != [])
    running = processes_running(argv)
    for pid in running:
        daemons.track(pid)
    found = control.status(path)
    assert (found.state, [found.pid]) == (PIDStatus.RUNNING, running)
    assert dk(daemons, "stop", "--pidfile", path).returncode == 0
    assert wait_gone(running[0], 5.0)
    assert_not_running(path)


@pytest.mark.parametrize(
    "stage",
    ["after-fork", "before-exec", "exec'd, before READY=1 (--notify)"],
)
def test_kill_9_of_a_started_program_before_it_is_ready(
    daemons: Daemons, tmp_path: Path, stage: str
) -> None:
    """``daemonkit start``: SIGKILL after the fork, just before exec, or after
    exec but before the program's own READY=1. The command exits 1 at once,
    naming the pid and SIGKILL; status says not running; the next start works."""
    path = tmp_path / "d.pid"
    stage_file = tmp_path / "stage"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    if stage.startswith("exec'd"):
        env = clean_env()
        command = ["--notify", "--", sys.executable, "-c", NEVER_READY, str(stage_file)]
    else:
        env = clean_env(DKTEST_HALT=stage, DKTEST_STAGE_FILE=str(stage_file))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hooks), env.get("PYTHONPATH")]))
        command = ["--", *marker(0)]
    launcher = popen(daemons, [*DAEMONKIT, "start", "--pidfile", str(path), *command], env=env)
    pid = halted_pid(daemons, stage_file) if "exec'd" not in stage else None
    if pid is None:
        assert wait_until(stage_file.exists, 15)
        pid = int(stage_file.read_text())
        daemons.track(pid)
    found = control.status(path)
    expected = (PIDStatus.STARTING, None) if stage == "after-fork" else (PIDStatus.RUNNING, pid)
    assert (found.state, found.pid) == expected
    assert launcher.poll() is None
    os.kill(pid, signal.SIGKILL)
    code, err, elapsed = finish(launcher)
    assert_reports_sigkill(code, err, pid, elapsed)
    assert wait_gone(pid, 5.0)
    assert_not_running(path)
    assert processes_running(marker(0)) == []
    start_again_works(daemons, path, 1)


def test_kill_9_of_a_running_program_then_start_again(daemons: Daemons, tmp_path: Path) -> None:
    """After ``kill -9`` of a running daemon: status 1 (dead, pidfile remains),
    and ``start`` works straight away, without a stop or any cleanup."""
    path = tmp_path / "d.pid"
    argv = marker(2)
    launch = dk(daemons, "start", "--pidfile", path, "--", *argv)
    assert launch.returncode == 0, launch.stderr
    [pid] = processes_running(argv)
    daemons.track(pid)
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid, 5.0)
    status = dk(daemons, "status", "--pidfile", path)
    assert status.returncode == 1, status.stdout
    assert "dead" in status.stdout
    start_again_works(daemons, path, 3)


def test_kill_9_of_a_running_program_whose_child_lives_on(daemons: Daemons, tmp_path: Path) -> None:
    """The daemon (``sh``) forked a worker, then was killed with SIGKILL.

    The daemon is dead: status must not say it runs or is starting (LSB 0),
    and start must not claim it is "already running as pid" the dead pid.
    (The worker inherited the locked descriptor: ``start`` makes it
    inheritable for the exec'd program, and nothing closes it in the
    program's own children, as register_at_fork does for DaemonContext.)
    """
    path = tmp_path / "d.pid"
    child_file = tmp_path / "child.pid"
    argv = marker(4)
    script = f"{' '.join(argv)} & echo $! > {child_file}; wait"
    launch = dk(daemons, "start", "--pidfile", path, "--", "sh", "-c", script)
    assert launch.returncode == 0, launch.stderr
    pid = int(path.read_text())
    daemons.track(pid)
    assert wait_until(lambda: child_file.exists() and child_file.read_text().endswith("\n"))
    child = int(child_file.read_text())
    daemons.track(child)
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid, 5.0)
    assert is_alive(child)
    status = dk(daemons, "status", "--pidfile", path)
    again = dk(daemons, "start", "--pidfile", path, "--", *marker(5))
    for found in processes_running(marker(5)):
        daemons.track(found)
    assert status.returncode != 0, status.stdout
    assert f"running as pid {pid}" not in again.stderr, again.stderr
    assert f"pid {child}" in again.stderr, again.stderr  # the process to stop is named
    assert f"pid {child}" in status.stdout, status.stdout
