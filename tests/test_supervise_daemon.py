"""The detached supervisor: ``daemonkit start --respawn`` and the ``Daemon`` app runner.

With ``--respawn`` the daemon that ``start`` leaves behind is a supervisor
(``/proc/PID/comm`` is ``dk-supervise``): the pidfile names it, and it runs
the program as its child, restarting it when it dies. ``status`` reports both
pids, ``stop`` ends both (SIGTERM is forwarded, then supervision ends),
``reload --notify`` hears the program's RELOADING=1/READY=1 through it.

Everything here runs real processes. The supervisor's pid comes from the
pidfile, the program's from ``status --json`` ("program_pids"); both are
tracked by the ``daemons`` fixture as soon as they are known, and the
supervisor is tracked again after its programs, so that at teardown it is
killed first (its program then dies of PR_SET_PDEATHSIG, and is killed by
pid anyway). Programs that must be gone are given a marker command line
(``test_races.marker``) so a stray one would be found in /proc.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import Daemons, Launch, is_alive, wait_gone, wait_until
from test_cli import DAEMONKIT, NOTIFY, cmdline, daemon_pid, dk, last_launcher, stat_fields
from test_races import marker, track_markers
from test_validation import drop_to_nobody

from daemonkit import control

pytestmark = pytest.mark.timeout(30)

NOBODY = 65534
# ``python -m daemonkit`` as nobody: the interpreter starts as root and drops
# first (setpriv would not do: it may live where nobody cannot read it, as
# pyenv's under /root does), with every module it will need already loaded.
AS_NOBODY_DK_SCRIPT = """\
import argparse, ctypes, gettext, hashlib, json, locale, os, select, shutil, socket, sys
import threading
import daemonkit.cli, daemonkit.control, daemonkit.notify, daemonkit.supervise
daemonkit._posix.load_libc()
daemonkit.cli.build_parser()  # argparse reads its translations now, as root
{drop}
sys.exit(daemonkit.cli.main(sys.argv[1:]))
"""


def as_nobody(*argv: str) -> list[str]:
    """The command line running ``daemonkit ARGV`` as nobody, from the start."""
    return [sys.executable, "-c", AS_NOBODY_DK_SCRIPT.format(drop=drop_to_nobody()), *argv]


# Says READY=1 after a pause, then lives on (argv: seconds to wait first).
SLOW_READY = (
    NOTIFY
    + """\
import sys, time
time.sleep(float(sys.argv[1]))
notify("READY=1")
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.05)
"""
)

# On SIGHUP: RELOADING=1, a pause (re-reading its configuration), READY=1.
RELOADS = (
    NOTIFY
    + """\
import signal, time
def on_hup(signum, frame):
    notify("RELOADING=1")
    time.sleep(0.3)
    notify("READY=1")
signal.signal(signal.SIGHUP, on_hup)
notify("READY=1")
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.05)
"""
)


def supervised(daemons: Daemons, pidfile: Path) -> list[int]:
    """``status --json`` of a supervised daemon: its program pids (tracked).

    Asserts that the status is "running" and names a supervisor: the one
    the pidfile names, which is tracked again after its programs (so that
    the fixture kills it first).
    """
    launch = dk(daemons, "status", "--json", "--pidfile", pidfile)
    assert launch.returncode == 0, (launch.stdout, launch.stderr)
    data = json.loads(launch.stdout)
    supervisor = daemon_pid(daemons, pidfile)
    assert (data["state"], data["pid"], data["supervisor"]) == ("running", supervisor, True)
    programs: list[int] = data["program_pids"]
    for pid in programs:
        daemons.track(pid)
    daemons.track(supervisor)
    return programs


def next_program(daemons: Daemons, pidfile: Path, old: set[int], timeout: float = 10.0) -> int:
    """Wait until the supervisor runs one program that is not in ``old``; its pid."""
    seen: list[int] = []

    def restarted() -> bool:
        found = control.status(pidfile).supervised or []
        seen[:] = found
        return len(found) == 1 and found[0] not in old

    if not wait_until(restarted, timeout):
        pytest.fail(f"no new program within {timeout} s (old {old}, now {seen})")
    programs = supervised(daemons, pidfile)
    assert programs == seen, (programs, seen)
    return programs[0]


def start_supervised(daemons: Daemons, pidfile: Path, *argv: str) -> tuple[int, int]:
    """``start --respawn --pidfile P -- ARGV``: (supervisor pid, program pid), tracked."""
    launch = dk(daemons, "start", "--respawn", "--pidfile", pidfile, "--", *argv)
    assert launch.returncode == 0, launch.stderr
    supervisor = daemon_pid(daemons, pidfile)
    programs = supervised(daemons, pidfile)
    assert len(programs) == 1, programs
    return supervisor, programs[0]


def uids(pid: int) -> list[int]:
    """The real, effective, saved and file-system uids of ``pid``."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Uid:"):
                return [int(field) for field in line.split()[1:]]
    raise AssertionError(f"no Uid line for pid {pid}")


def pid_in_message(daemons: Daemons, text: str) -> int:
    """The pid a launcher's failure message names (tracked)."""
    found = re.search(r"pid (\d+)", text)
    assert found, text
    pid = int(found.group(1))
    daemons.track(pid)
    return pid


def assert_all_gone(daemons: Daemons, pids: list[int], argv: list[str] | None = None) -> None:
    """Every pid has exited, and no process runs ``argv`` (a marker command line)."""
    for pid in pids:
        assert wait_gone(pid, 10.0), f"pid {pid} is still running"
    if argv is not None:
        assert wait_until(lambda: not track_markers(daemons, argv), 10.0), argv


def run_in(daemons: Daemons, command: list[str], cwd: Path, timeout: float = 30.0) -> Launch:
    """Run ``command`` (tracked) in ``cwd`` to its end, as ``Daemons.run`` does."""
    began = time.monotonic()
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        text=True,
    )
    daemons.track(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{command} did not exit within {timeout} s; stderr: {err!r}")
    return Launch(proc.returncode, out, err, time.monotonic() - began)


# --- 1-3: the life of a supervised daemon ---------------------------------------------


def test_start_respawn_leaves_a_detached_supervisor_with_its_program(
    daemons: Daemons, tmp_path: Path
) -> None:
    """``start --respawn`` returns 0 and leaves a supervisor, named by the pidfile,
    whose child is the program; ``status`` names both.

    The launcher runs with a controlling terminal (a pty) so that "the
    supervisor has none" proves it detached: it must not be a session leader
    either (it could then acquire a terminal by opening one).
    """
    pidfile = tmp_path / "d.pid"
    master, slave = os.openpty()

    def own_terminal() -> None:  # in the launcher: a session whose terminal is the pty
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        launch = daemons.run(
            [*DAEMONKIT, "start", "--respawn", "--pidfile", str(pidfile), "--", "sleep", "300"],
            stdin=slave,
            preexec_fn=own_terminal,
        )
        assert launch.returncode == 0, launch.stderr
        launcher = last_launcher(daemons)  # the leader of the terminal's session
        supervisor = daemon_pid(daemons, pidfile)
        assert pidfile.read_text() == f"{supervisor}\n"
        assert Path(f"/proc/{supervisor}/comm").read_text() == "dk-supervise\n"

        status = dk(daemons, "status", "--pidfile", pidfile)
        assert status.returncode == 0, status.stderr
        programs = supervised(daemons, pidfile)
        assert len(programs) == 1, programs
        child = programs[0]
        assert child != supervisor
        assert f"supervisor pid {supervisor}" in status.stdout, status.stdout
        assert f"program pid {child}" in status.stdout, status.stdout

        assert cmdline(child) == ["sleep", "300"]
        assert int(stat_fields(child)[1]) == supervisor, "the program is the supervisor's child"
        _, _, _, session, tty_nr = stat_fields(supervisor)[:5]
        assert tty_nr == "0", "the supervisor has a controlling terminal"
        assert int(session) != supervisor, "the supervisor is a session leader"
        assert int(session) != launcher, "the supervisor stayed in the terminal's session"
        assert stat_fields(child)[4] == "0", "the program has a controlling terminal"
    finally:
        os.close(master)
        os.close(slave)


def test_a_killed_program_is_restarted_under_the_same_supervisor(
    daemons: Daemons, tmp_path: Path
) -> None:
    """kill -9 of the program: the supervisor starts a new one (``status`` shows
    it), and the pidfile keeps naming the same supervisor."""
    pidfile = tmp_path / "d.pid"
    argv = marker(901)
    supervisor, first = start_supervised(daemons, pidfile, *argv)
    os.kill(first, 9)
    assert wait_gone(first, 5.0)
    second = next_program(daemons, pidfile, {first})
    assert is_alive(second) and cmdline(second) == argv
    assert int(stat_fields(second)[1]) == supervisor
    assert daemon_pid(daemons, pidfile) == supervisor
    assert is_alive(supervisor)
    status = dk(daemons, "status", "--pidfile", pidfile)
    assert status.returncode == 0
    assert f"supervisor pid {supervisor}" in status.stdout
    assert f"program pid {second}" in status.stdout
    assert track_markers(daemons, argv) == [second]


def test_stop_ends_the_supervisor_and_its_program(daemons: Daemons, tmp_path: Path) -> None:
    """``stop`` signals the supervisor, which forwards SIGTERM and does not
    restart: both exit, the pidfile is removed, nothing is left running."""
    pidfile = tmp_path / "d.pid"
    argv = marker(902)
    supervisor, child = start_supervised(daemons, pidfile, *argv)
    stopped = dk(daemons, "stop", "--pidfile", pidfile)
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped (pid {supervisor}" in stopped.stderr
    assert_all_gone(daemons, [supervisor, child], argv)
    assert not pidfile.exists()
    status = dk(daemons, "status", "--pidfile", pidfile)
    assert (status.returncode, status.stdout.strip()) == (3, "not running")


def test_a_second_start_respawn_starts_nothing(daemons: Daemons, tmp_path: Path) -> None:
    """``start --respawn`` while a supervised daemon holds the pidfile: LSB's
    "already running" (exit 0), no second supervisor, no second program."""
    pidfile = tmp_path / "d.pid"
    supervisor, child = start_supervised(daemons, pidfile, *marker(907))
    argv = marker(908)
    again = dk(daemons, "start", "--respawn", "--pidfile", pidfile, "--", *argv)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stderr
    assert daemon_pid(daemons, pidfile) == supervisor
    assert supervised(daemons, pidfile) == [child]
    time.sleep(0.2)  # a program started in spite of it would be running by now
    assert track_markers(daemons, argv) == []


def test_status_and_stop_during_a_backoff_pause(daemons: Daemons, tmp_path: Path) -> None:
    """Between a failed run and its restart (a 5 s backoff) the supervisor still
    holds the pidfile: ``status`` says running, with no program ("its program is
    restarting"); ``stop`` ends the pause at once, and nothing restarts."""
    pidfile = tmp_path / "d.pid"
    argv = ["sh", "-c", "sleep 1; exit 1", f"dk-backoff-{os.getpid()}"]
    launch = dk(
        daemons, "start", "--respawn", "--backoff", "5..5", "--pidfile", pidfile, "--", *argv
    )
    assert launch.returncode == 0, launch.stderr
    supervisor = daemon_pid(daemons, pidfile)
    (child,) = supervised(daemons, pidfile)
    assert wait_gone(child, 5.0)
    assert wait_until(lambda: control.status(pidfile).supervised == [], 5.0)
    assert supervised(daemons, pidfile) == []
    status = dk(daemons, "status", "--pidfile", pidfile)
    assert status.returncode == 0
    assert f"supervisor pid {supervisor}" in status.stdout
    assert "its program is restarting" in status.stdout

    stopped = dk(daemons, "stop", "--pidfile", pidfile)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.elapsed < 4, "stop waited for the backoff pause to end"
    assert_all_gone(daemons, [supervisor], argv)
    assert not pidfile.exists()


def test_kill_9_of_the_supervisor_takes_its_program_along(daemons: Daemons, tmp_path: Path) -> None:
    """The program gets PR_SET_PDEATHSIG=SIGKILL: a supervisor killed by
    ``kill -9`` (no chance to forward anything) leaves no program running, and
    the pidfile it could not remove is reported as stale."""
    pidfile = tmp_path / "d.pid"
    argv = marker(909)
    supervisor, child = start_supervised(daemons, pidfile, *argv)
    os.kill(supervisor, 9)
    assert_all_gone(daemons, [supervisor, child], argv)
    status = dk(daemons, "status", "--pidfile", pidfile)
    assert status.returncode == 1, status.stdout
    assert "dead" in status.stdout


# --- 4-5: the first run decides what start says ---------------------------------------


def test_a_first_run_that_fails_fails_the_start(daemons: Daemons, tmp_path: Path) -> None:
    """A program that exits at once under ``--respawn``: start exits 1 naming the
    status (it is not restarted behind the launcher's back), and nothing is left."""
    pidfile = tmp_path / "d.pid"
    argv = ["sh", "-c", "exit 3", f"dk-exit-3-{os.getpid()}"]
    launch = dk(daemons, "start", "--respawn", "--pidfile", pidfile, "--", *argv)
    assert launch.returncode == 1, launch.stderr
    assert "exited with status 3" in launch.stderr
    supervisor = pid_in_message(daemons, launch.stderr)
    assert launch.elapsed < 15, launch.elapsed
    assert_all_gone(daemons, [supervisor], argv)
    assert not pidfile.exists()
    status = dk(daemons, "status", "--pidfile", pidfile)
    assert status.returncode == 3


def test_a_missing_command_under_respawn_exits_5(daemons: Daemons, tmp_path: Path) -> None:
    """Command not found is found before anything starts: exit 5, as plain start."""
    pidfile = tmp_path / "d.pid"
    launch = dk(
        daemons, "start", "--respawn", "--pidfile", pidfile, "--", "daemonkit-no-such-command-y"
    )
    assert launch.returncode == 5, launch.stderr
    assert "command not found: daemonkit-no-such-command-y" in launch.stderr
    assert not pidfile.exists()


def test_a_first_run_never_ready_fails_the_start(daemons: Daemons, tmp_path: Path) -> None:
    """``--respawn --notify --timeout 1`` with a program that never says READY=1:
    start exits 1 with a message; the supervisor and the program are gone."""
    pidfile = tmp_path / "d.pid"
    argv = marker(903)
    launch = dk(
        daemons,
        "start",
        "--respawn",
        "--notify",
        "--timeout",
        "1",
        "--pidfile",
        pidfile,
        "--",
        *argv,
    )
    assert launch.returncode == 1, launch.stderr
    assert "ready" in launch.stderr, launch.stderr
    supervisor = pid_in_message(daemons, launch.stderr)
    assert launch.elapsed >= 0.9, launch.elapsed
    assert_all_gone(daemons, [supervisor], argv)
    assert not pidfile.exists()


def test_start_respawn_notify_waits_for_ready(daemons: Daemons, tmp_path: Path) -> None:
    """``--respawn --notify``: the launcher returns 0 only once the program
    (behind the supervisor) said READY=1, 0.5 s after it started."""
    pidfile = tmp_path / "d.pid"
    launch = dk(
        daemons,
        "start",
        "--respawn",
        "--notify",
        "--pidfile",
        pidfile,
        "--",
        sys.executable,
        "-c",
        SLOW_READY,
        "0.5",
    )
    assert launch.returncode == 0, launch.stderr
    assert launch.elapsed >= 0.5, launch.elapsed
    assert launch.elapsed < 20, launch.elapsed
    supervisor = daemon_pid(daemons, pidfile)
    (child,) = supervised(daemons, pidfile)
    assert int(stat_fields(child)[1]) == supervisor
    stopped = dk(daemons, "stop", "--pidfile", pidfile)
    assert stopped.returncode == 0, stopped.stderr
    assert_all_gone(daemons, [supervisor, child])


# --- 6: reload through the supervisor -------------------------------------------------


def test_reload_notify_through_the_supervisor(daemons: Daemons, tmp_path: Path) -> None:
    """``reload --notify``: SIGHUP goes to the supervisor, which forwards it; the
    program's RELOADING=1 and READY=1 are relayed to where reload listens.
    The program is reloaded, not restarted."""
    pidfile = tmp_path / "d.pid"
    launch = dk(
        daemons,
        "start",
        "--respawn",
        "--notify",
        "--pidfile",
        pidfile,
        "--",
        sys.executable,
        "-c",
        RELOADS,
    )
    assert launch.returncode == 0, launch.stderr
    supervisor = daemon_pid(daemons, pidfile)
    (child,) = supervised(daemons, pidfile)

    reloaded = dk(daemons, "reload", "--notify", "--timeout", "10", "--pidfile", pidfile)
    assert reloaded.returncode == 0, reloaded.stderr
    assert f"sent SIGHUP to pid {supervisor}" in reloaded.stdout
    assert "RELOADING=1, then READY=1" in reloaded.stdout
    assert reloaded.elapsed >= 0.3, "reload returned before the program's READY=1"
    assert supervised(daemons, pidfile) == [child]
    assert is_alive(child)

    stopped = dk(daemons, "stop", "--pidfile", pidfile)
    assert stopped.returncode == 0, stopped.stderr
    assert_all_gone(daemons, [supervisor, child])


# --- 7: users -------------------------------------------------------------------------


def test_respawn_with_user_runs_supervisor_and_program_as_that_user(
    daemons: Daemons, tmp_path: Path
) -> None:
    """``--respawn --user nobody`` (as root): the supervisor drops privileges
    before it starts the program, so both run as uid 65534; stop works."""
    pidfile = tmp_path / "d.pid"
    argv = marker(904)
    launch = dk(
        daemons, "start", "--respawn", "--user", "nobody", "--pidfile", pidfile, "--", *argv
    )
    assert launch.returncode == 0, launch.stderr
    supervisor = daemon_pid(daemons, pidfile)
    (child,) = supervised(daemons, pidfile)
    assert uids(supervisor) == [NOBODY] * 4
    assert uids(child) == [NOBODY] * 4
    stopped = dk(daemons, "stop", "--pidfile", pidfile)
    assert stopped.returncode == 0, stopped.stderr
    assert_all_gone(daemons, [supervisor, child], argv)
    assert not pidfile.exists()


def test_respawn_started_by_an_unprivileged_user(daemons: Daemons, open_dir: Path) -> None:
    """The whole ``start --respawn`` run as nobody (no root anywhere), with the
    pidfile in a directory nobody may write: it works, and nobody can stop it."""
    pidfile = open_dir / "d.pid"
    argv = marker(905)
    launch = run_in(
        daemons,
        as_nobody("start", "--respawn", "--pidfile", str(pidfile), "--", *argv),
        open_dir,
    )
    assert launch.returncode == 0, launch.stderr
    supervisor = daemon_pid(daemons, pidfile)
    (child,) = supervised(daemons, pidfile)
    assert uids(supervisor) == [NOBODY] * 4
    assert uids(child) == [NOBODY] * 4
    assert Path(f"/proc/{supervisor}/comm").read_text() == "dk-supervise\n"

    status = run_in(daemons, as_nobody("status", "--pidfile", str(pidfile)), open_dir)
    assert status.returncode == 0, status.stderr
    assert f"program pid {child}" in status.stdout
    stopped = run_in(daemons, as_nobody("stop", "--pidfile", str(pidfile)), open_dir)
    assert stopped.returncode == 0, stopped.stderr
    assert_all_gone(daemons, [supervisor, child], argv)
    assert not pidfile.exists()


# --- 8: option validation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "code", "text"),
    [
        pytest.param(["--backoff", "1..2"], 6, "--backoff needs --respawn", id="backoff-alone"),
        pytest.param(["--respawn", "--max-restarts", "x"], 2, "--max-restarts", id="restarts-x"),
        pytest.param(["--respawn", "--backoff", "5..1"], 2, "--backoff", id="backoff-reversed"),
        pytest.param(["-g"], 6, "--process-group needs --respawn or --init", id="group-alone"),
    ],
)
def test_bad_supervision_options_start_nothing(
    daemons: Daemons, tmp_path: Path, options: list[str], code: int, text: str
) -> None:
    """Supervision options that cannot work are refused before anything starts:
    argparse's exit 2 for a malformed value, LSB 6 for an option that needs
    ``--respawn``; no pidfile, no program."""
    pidfile = tmp_path / "d.pid"
    argv = marker(906)
    launch = dk(daemons, "start", *options, "--pidfile", pidfile, "--", *argv)
    assert launch.returncode == code, launch.stderr
    assert text in launch.stderr, launch.stderr
    if code == 2:
        assert "usage:" in launch.stderr
    assert not pidfile.exists()
    time.sleep(0.2)  # a program started in spite of it would be running by now
    assert track_markers(daemons, argv) == []


# --- 9: the start limit in start mode -------------------------------------------------


def test_the_detached_supervisor_gives_up_at_the_start_limit(
    daemons: Daemons, tmp_path: Path
) -> None:
    """``--max-restarts 2 --within 60``: the first run survives 0.2 s, so start
    says 0; then three failed runs in a row make the supervisor give up and
    exit, and the daemon is "not running" with its pidfile gone."""
    pidfile = tmp_path / "d.pid"
    log = tmp_path / "supervisor.log"
    argv = ["sh", "-c", "sleep 0.4; exit 1", f"dk-limit-{os.getpid()}"]
    launch = dk(
        daemons,
        "start",
        "--respawn",
        "--max-restarts",
        "2",
        "--within",
        "60",
        "--backoff",
        "0..0",
        "--stderr",
        log,
        "--pidfile",
        pidfile,
        "--",
        *argv,
    )
    assert launch.returncode == 0, launch.stderr
    text = pidfile.read_text() if pidfile.exists() else ""
    supervisor = int(text) if text.strip().isdigit() else None
    if supervisor is not None:
        daemons.track(supervisor)

    def not_running() -> bool:
        return dk(daemons, "status", "--pidfile", pidfile).returncode == 3

    assert wait_until(not_running, 10.0), log.read_text() if log.exists() else ""
    assert not pidfile.exists()
    if supervisor is not None:
        assert wait_gone(supervisor, 5.0)
    assert_all_gone(daemons, [], argv)
    said = log.read_text()
    assert "giving up: it ended 3 times within 60 s (at most 2 restarts allowed)" in said, said
    assert said.count("exited with status 1") == 3, said


# --- 10: the Daemon app runner --------------------------------------------------------

APP = """\
import os, sys, time
import daemonkit

RUNS = {runs!r}
LOG = {log!r}
FAIL = {fail!r}

app = daemonkit.Daemon("dkapp", pidfile={pidfile!r}, {streams})

@app.main
def serve():
    with open(RUNS, "a") as runs:
        runs.write(f"{{os.getpid()}}\\n")
    if FAIL:
        raise RuntimeError("boom from @main")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.05)

@app.on_reload
def reload():
    with open(LOG, "a") as log:
        log.write(f"reloaded {{os.getpid()}}\\n")

if __name__ == "__main__":
    app.cli()
"""


def write_app(tmp_path: Path, fail: bool) -> tuple[Path, Path, Path, Path]:
    """A ``Daemon`` app script; (script, pidfile, file of @main's pids, log)."""
    pidfile, runs, log = tmp_path / "app.pid", tmp_path / "runs.txt", tmp_path / "app.log"
    # Detached, the log takes both streams; in the foreground, stderr is kept
    # (None would mean /dev/null, as PEP 3143 says).
    streams = "stderr=sys.stderr" if fail else f"stdout={str(log)!r}, stderr={str(log)!r}"
    script = tmp_path / "app.py"
    script.write_text(
        APP.format(runs=str(runs), log=str(log), fail=fail, pidfile=str(pidfile), streams=streams)
    )
    return script, pidfile, runs, log


def main_pids(runs: Path) -> list[int]:
    return [int(line) for line in runs.read_text().split()] if runs.exists() else []


def test_daemon_app_start_respawn_reload_kill_stop(daemons: Daemons, tmp_path: Path) -> None:
    """``app.py start --respawn``: the pidfile names a supervisor whose child runs
    @main; ``reload`` reaches @on_reload in the program (not the supervisor);
    a killed @main is run again; ``stop`` ends everything."""
    script, pidfile, runs, log = write_app(tmp_path, fail=False)

    def app(*argv: str) -> Launch:
        return daemons.run([sys.executable, str(script), *argv])

    started = app("start", "--respawn")
    assert started.returncode == 0, started.stderr
    supervisor = daemon_pid(daemons, pidfile)
    assert Path(f"/proc/{supervisor}/comm").read_text() == "dk-supervise\n"
    (child,) = supervised(daemons, pidfile)
    assert int(stat_fields(child)[1]) == supervisor
    assert wait_until(lambda: main_pids(runs) == [child], 10.0), main_pids(runs)
    status = app("status")
    assert status.returncode == 0, status.stderr
    assert f"supervisor pid {supervisor}" in status.stdout
    assert f"program pid {child}" in status.stdout

    reloaded = app("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert wait_until(lambda: "reloaded" in log.read_text(), 10.0), log.read_text()
    assert wait_until(lambda: log.read_text().endswith("\n"), 5.0)
    reloads = re.findall(r"reloaded (\d+)", log.read_text())
    assert reloads == [str(child)], log.read_text()
    assert supervised(daemons, pidfile) == [child]

    os.kill(child, 9)
    assert wait_gone(child, 5.0)
    second = next_program(daemons, pidfile, {child})
    assert wait_until(lambda: main_pids(runs) == [child, second], 10.0), main_pids(runs)
    assert daemon_pid(daemons, pidfile) == supervisor
    assert re.findall(r"reloaded (\d+)", log.read_text()) == [str(child)], "a second reload"

    stopped = app("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert_all_gone(daemons, [supervisor, child, second])
    assert not pidfile.exists()
    assert app("status").returncode == 3


def test_daemon_app_run_respawn_gives_up_on_a_raising_main(
    daemons: Daemons, tmp_path: Path
) -> None:
    """``app.py run --respawn --max-restarts 1 --backoff 0..0`` with an @main that
    raises: it runs twice (one restart), then supervision gives up with exit 1,
    and each run's traceback is on stderr."""
    script, pidfile, runs, _ = write_app(tmp_path, fail=True)
    launch = daemons.run(
        [
            sys.executable,
            str(script),
            "run",
            "--respawn",
            "--max-restarts",
            "1",
            "--backoff",
            "0..0",
        ]
    )
    for pid in main_pids(runs):
        daemons.track(pid)
    assert launch.returncode == 1, launch.stderr
    pids = main_pids(runs)
    assert len(pids) == 2 and len(set(pids)) == 2, pids
    assert launch.stderr.count("Traceback (most recent call last)") == 2, launch.stderr
    assert launch.stderr.count("RuntimeError: boom from @main") == 2, launch.stderr
    assert "giving up" in launch.stderr, launch.stderr
    assert_all_gone(daemons, pids)
    assert not pidfile.exists()


# --- 11: restart ----------------------------------------------------------------------


def test_restart_respawn_replaces_a_supervised_daemon(daemons: Daemons, tmp_path: Path) -> None:
    """``restart --respawn`` over a supervised daemon: the old supervisor and its
    program are gone, a new supervisor (named by the pidfile) runs a new program."""
    pidfile = tmp_path / "d.pid"
    old_supervisor, old_child = start_supervised(daemons, pidfile, "sleep", "300")
    launch = dk(daemons, "restart", "--respawn", "--pidfile", pidfile, "--", "sleep", "300")
    assert launch.returncode == 0, launch.stderr
    supervisor = daemon_pid(daemons, pidfile)
    assert supervisor != old_supervisor
    assert_all_gone(daemons, [old_supervisor, old_child])
    (child,) = supervised(daemons, pidfile)
    assert child != old_child
    assert Path(f"/proc/{supervisor}/comm").read_text() == "dk-supervise\n"
    assert int(stat_fields(child)[1]) == supervisor
    assert cmdline(child) == ["sleep", "300"]
