"""The ``daemonkit`` command end to end, with real processes.

Every command runs as ``python -m daemonkit`` through the ``daemons``
fixture, which tracks the launcher; each daemon's pid is tracked as soon as
it is known (from the pidfile or from a message), so the fixture kills
whatever a failing test leaves behind, by pid.

Programs that must be in a given state before the test acts on them (a
SIGTERM handler installed, a SIGHUP handler installed) say READY=1 once they
are, and are started with ``--notify``: a bare exec is "up" for the command,
but not yet ready for the test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Daemons, Launch, is_alive, wait_gone

DAEMONKIT = [sys.executable, "-m", "daemonkit"]

# Sends its sd_notify messages to $NOTIFY_SOCKET ('@' means the abstract namespace).
NOTIFY = """\
import os, socket
def notify(message):
    address = os.environ["NOTIFY_SOCKET"]
    if address.startswith("@"):
        address = "\\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), address)
"""

IGNORES_TERM = (
    NOTIFY
    + """\
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
notify("READY=1")
time.sleep(60)
"""
)

# argv: LOG
RECORDS_HUP = (
    NOTIFY
    + """\
import signal, sys, time
LOG = sys.argv[1]
def on_hup(signum, frame):
    with open(LOG, "a") as log:
        log.write("HUP\\n")
signal.signal(signal.SIGHUP, on_hup)
notify("READY=1")
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.05)
"""
)


def dk(daemons: Daemons, *args: str | Path, timeout: float = 30.0) -> Launch:
    """Run ``python -m daemonkit ARGS`` (the launcher is tracked) to its end."""
    return daemons.run([*DAEMONKIT, *map(str, args)], timeout=timeout)


def last_launcher(daemons: Daemons) -> int:
    """The pid of the process the last ``dk`` call started."""
    return daemons.tracked[-1][0]


def daemon_pid(daemons: Daemons, pidfile: Path) -> int:
    """The pid the pidfile names, tracked for cleanup."""
    text = pidfile.read_text()
    assert re.fullmatch(r"[1-9][0-9]*\n", text), repr(text)
    pid = int(text)
    daemons.track(pid)
    return pid


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as file:
        return file.read().decode().split("\0")[:-1]


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: [state, ppid, pgrp, session, ...]."""
    with open(f"/proc/{pid}/stat") as file:
        return file.read().rsplit(")", 1)[1].split()


def processes_running(argv: list[str]) -> list[int]:
    """Pids of live processes whose command line is exactly ``argv``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if cmdline(int(entry)) == argv and is_alive(int(entry)):
                found.append(int(entry))
        except OSError:
            pass
    return found


def wait_for_line(path: Path, timeout: float = 10.0) -> str:
    """Wait until ``path`` holds at least one complete line; its content."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        if text.endswith("\n"):
            return text
        if time.monotonic() > deadline:
            pytest.fail(f"no complete line in {path} within {timeout} s: {text!r}")
        time.sleep(0.01)


def json_status(daemons: Daemons, pidfile: Path) -> tuple[int, dict[str, object]]:
    launch = dk(daemons, "status", "--pidfile", pidfile, "--json")
    data: dict[str, object] = json.loads(launch.stdout)
    return launch.returncode, data


def start_sleep(daemons: Daemons, pidfile: Path, *argv: str) -> int:
    """``start --pidfile P -- sleep 30`` (or ARGV); the daemon's pid."""
    launch = dk(daemons, "start", "--pidfile", pidfile, "--", *(argv or ("sleep", "30")))
    assert launch.returncode == 0, launch.stderr
    return daemon_pid(daemons, pidfile)


# --- start, status, stop: the normal life of a daemon -----------------------


def test_start_status_stop_a_daemon(daemons: Daemons, tmp_path: Path) -> None:
    pidfile = tmp_path / "d.pid"
    launch = dk(daemons, "start", "--pidfile", pidfile, "--", "sleep", "30")
    assert launch.returncode == 0, launch.stderr
    launcher = last_launcher(daemons)
    pid = daemon_pid(daemons, pidfile)
    assert is_alive(pid)
    assert cmdline(pid) == ["sleep", "30"]
    _, ppid, _, session = stat_fields(pid)[:4]
    assert int(ppid) != launcher
    assert int(session) != pid, "the daemon must not be a session leader"

    status = dk(daemons, "status", "--pidfile", pidfile)
    assert status.returncode == 0, status.stderr
    assert f"running (pid {pid}" in status.stdout
    code, data = json_status(daemons, pidfile)
    assert code == 0
    assert (data["state"], data["pid"], data["code"]) == ("running", pid, 0)

    # A second start: LSB says 0, with a message; it starts nothing.
    marker = ["sleep", "31.5"]
    again = dk(daemons, "start", "--pidfile", pidfile, "--", *marker)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stderr
    assert str(pid) in again.stderr
    assert processes_running(marker) == []
    assert pidfile.read_text() == f"{pid}\n"
    assert is_alive(pid)

    stopped = dk(daemons, "stop", "--pidfile", pidfile)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stderr
    assert wait_gone(pid, 5.0)
    assert not pidfile.exists()

    after = dk(daemons, "status", "--pidfile", pidfile)
    assert after.returncode == 3
    assert "not running" in after.stdout
    again_stop = dk(daemons, "stop", "--pidfile", pidfile)
    assert again_stop.returncode == 0, again_stop.stderr
    assert "not running" in again_stop.stderr


# --- start failures ---------------------------------------------------------


def test_start_of_a_missing_command(daemons: Daemons, tmp_path: Path) -> None:
    pidfile = tmp_path / "d.pid"
    launch = dk(daemons, "start", "--pidfile", pidfile, "--", "daemonkit-no-such-command-x")
    assert launch.returncode == 5
    assert "command not found" in launch.stderr
    assert "daemonkit-no-such-command-x" in launch.stderr
    assert not pidfile.exists()


def test_start_of_a_command_that_exits_at_once(daemons: Daemons, tmp_path: Path) -> None:
    launch = dk(daemons, "start", "--pidfile", tmp_path / "d.pid", "--", "sh", "-c", "exit 3")
    assert launch.returncode == 1
    assert "exited with status 3" in launch.stderr
    found = re.search(r"pid (\d+)", launch.stderr)
    assert found, launch.stderr
    daemons.track(int(found.group(1)))
    assert wait_gone(int(found.group(1)), 5.0)


def test_start_of_a_program_that_never_becomes_ready(daemons: Daemons, tmp_path: Path) -> None:
    pidfile = tmp_path / "d.pid"
    launch = dk(
        daemons, "start", "--notify", "--timeout", "1", "--pidfile", pidfile, "--", "sleep", "30"
    )
    found = re.search(r"pid (\d+)", launch.stderr)
    assert found, launch.stderr
    pid = int(found.group(1))
    daemons.track(pid)
    assert launch.returncode == 1
    assert "not ready within 1 s" in launch.stderr
    assert 0.8 < launch.elapsed < 15, launch.elapsed
    assert wait_gone(pid, 5.0), "the launcher must stop a daemon that never became ready"


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(["--", "sh", "-c", "exit 3"], id="exits-at-once"),
        pytest.param(["--notify", "--timeout", "0.5", "--", "sleep", "30"], id="never-ready"),
    ],
)
def test_a_failed_start_leaves_no_pidfile(
    daemons: Daemons, tmp_path: Path, options: list[str]
) -> None:
    pidfile = tmp_path / "d.pid"
    launch = dk(daemons, "start", "--pidfile", pidfile, *options)
    found = re.search(r"pid (\d+)", launch.stderr)
    assert found, launch.stderr
    daemons.track(int(found.group(1)))
    assert launch.returncode == 1, launch.stderr
    assert wait_gone(int(found.group(1)), 5.0)
    status = dk(daemons, "status", "--pidfile", pidfile)
    assert (status.returncode, status.stdout.strip()) == (3, "not running")
    assert not pidfile.exists()


def test_start_with_notify_waits_for_ready_and_shows_status(
    daemons: Daemons, tmp_path: Path
) -> None:
    pidfile = tmp_path / "d.pid"
    program = NOTIFY + (
        "import time\n"
        "assert os.environ['NOTIFY_SOCKET'].startswith('@'), os.environ['NOTIFY_SOCKET']\n"
        "time.sleep(0.3)\n"
        "notify('STATUS=warming the caches')\n"
        "notify('READY=1')\n"
        "time.sleep(60)\n"
    )
    launch = dk(
        daemons, "start", "--notify", "--pidfile", pidfile, "--", sys.executable, "-c", program
    )
    assert launch.returncode == 0, launch.stderr
    pid = daemon_pid(daemons, pidfile)
    assert "warming the caches" in launch.stderr
    assert launch.elapsed > 0.25, "start returned before the program said READY=1"
    assert is_alive(pid)
    assert cmdline(pid)[:2] == [sys.executable, "-c"]
    stopped = dk(daemons, "stop", "--pidfile", pidfile)
    assert stopped.returncode == 0, stopped.stderr
    assert wait_gone(pid, 5.0)


def test_start_rejects_an_out_of_range_umask(daemons: Daemons, tmp_path: Path) -> None:
    pidfile = tmp_path / "d.pid"
    launch = dk(daemons, "start", "--umask", "999", "--pidfile", pidfile, "--", "sleep", "30")
    assert launch.returncode == 2
    assert "umask" in launch.stderr
    assert "usage:" in launch.stderr
    assert not pidfile.exists()


def test_start_rejects_a_missing_working_directory(daemons: Daemons, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-directory"
    pidfile = tmp_path / "d.pid"
    launch = dk(daemons, "start", "--chdir", missing, "--pidfile", pidfile, "--", "sleep", "30")
    assert launch.returncode == 6
    assert str(missing) in launch.stderr
    assert not pidfile.exists()


def test_start_rejects_an_unknown_user(daemons: Daemons, tmp_path: Path) -> None:
    pidfile = tmp_path / "d.pid"
    launch = dk(
        daemons, "start", "--user", "no_such_user_x", "--pidfile", pidfile, "--", "sleep", "30"
    )
    assert launch.returncode == 6
    assert "no_such_user_x" in launch.stderr
    assert not pidfile.exists()


# --- status in each LSB state -----------------------------------------------


def test_status_of_a_dead_daemon_whose_pidfile_remains(daemons: Daemons, tmp_path: Path) -> None:
    pidfile = tmp_path / "d.pid"
    pid = start_sleep(daemons, pidfile)
    os.kill(pid, 9)
    assert wait_gone(pid, 5.0)
    assert pidfile.read_text() == f"{pid}\n"
    status = dk(daemons, "status", "--pidfile", pidfile)
    assert status.returncode == 1
    assert "dead" in status.stdout
    code, data = json_status(daemons, pidfile)
    assert code == 1
    assert (data["state"], data["pid"], data["code"]) == ("stale", pid, 1)
    # stop of a stale pidfile: nothing to stop, and that is success.
    stopped = dk(daemons, "stop", "--pidfile", pidfile)
    assert stopped.returncode == 0, stopped.stderr


def test_status_without_a_pidfile(daemons: Daemons, tmp_path: Path) -> None:
    pidfile = tmp_path / "d.pid"
    status = dk(daemons, "status", "--pidfile", pidfile)
    assert (status.returncode, status.stdout.strip()) == (3, "not running")
    code, data = json_status(daemons, pidfile)
    assert code == 3
    assert (data["state"], data["pid"], data["code"]) == ("absent", None, 3)


def test_a_pidfile_naming_an_unrelated_live_process(daemons: Daemons, tmp_path: Path) -> None:
    """The recycled-pid case: the pid is alive, but nobody holds the lock."""
    pidfile = tmp_path / "d.pid"
    bystander = subprocess.Popen(["sleep", "30"])
    daemons.track(bystander.pid)
    try:
        pidfile.write_text(f"{bystander.pid}\n")
        status = dk(daemons, "status", "--pidfile", pidfile)
        assert status.returncode == 4
        assert "unknown" in status.stdout
        code, data = json_status(daemons, pidfile)
        assert code == 4
        assert (data["state"], data["pid"], data["code"]) == ("unverified", bystander.pid, 4)

        stopped = dk(daemons, "stop", "--pidfile", pidfile)
        assert stopped.returncode == 1, "stop cannot claim it stopped a daemon it did not"
        assert "does not hold" in stopped.stderr
        reloaded = dk(daemons, "reload", "--pidfile", pidfile)
        assert reloaded.returncode == 7
        # Had either signalled it, our child would be a zombie by now.
        with pytest.raises(subprocess.TimeoutExpired):
            bystander.wait(timeout=0.3)
        assert bystander.returncode is None
        assert pidfile.read_text() == f"{bystander.pid}\n"
    finally:
        bystander.kill()
        bystander.wait()


# --- stop ---------------------------------------------------------------------


def start_ignoring_term(daemons: Daemons, pidfile: Path) -> int:
    launch = dk(
        daemons, "start", "--notify", "--pidfile", pidfile, "--", sys.executable, "-c", IGNORES_TERM
    )
    assert launch.returncode == 0, launch.stderr
    return daemon_pid(daemons, pidfile)


def test_stop_escalates_to_kill_as_the_schedule_says(daemons: Daemons, tmp_path: Path) -> None:
    pidfile = tmp_path / "d.pid"
    pid = start_ignoring_term(daemons, pidfile)
    stopped = dk(daemons, "stop", "--pidfile", pidfile, "--retry", "TERM/1/KILL/5")
    assert stopped.returncode == 0, stopped.stderr
    assert "SIGTERM/SIGKILL" in stopped.stderr
    assert 0.9 < stopped.elapsed < 10, stopped.elapsed
    assert wait_gone(pid, 5.0)
    assert not pidfile.exists()


def test_stop_gives_up_after_its_timeout(daemons: Daemons, tmp_path: Path) -> None:
    pidfile = tmp_path / "d.pid"
    pid = start_ignoring_term(daemons, pidfile)
    stopped = dk(daemons, "stop", "--pidfile", pidfile, "--timeout", "0.5")
    assert stopped.returncode == 1
    assert "still running" in stopped.stderr
    assert 0.4 < stopped.elapsed < 10, stopped.elapsed
    assert is_alive(pid)
    status = dk(daemons, "status", "--pidfile", pidfile)
    assert status.returncode == 0
    killed = dk(daemons, "stop", "--pidfile", pidfile, "--signal", "KILL")
    assert killed.returncode == 0, killed.stderr
    assert wait_gone(pid, 5.0)


def start_shell_with_child(daemons: Daemons, tmp_path: Path, pidfile: Path) -> tuple[int, int]:
    """A shell daemon with a background child; (shell pid, child pid)."""
    child_file = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {child_file}; wait"
    pid = start_sleep(daemons, pidfile, "sh", "-c", script)
    child = int(wait_for_line(child_file))
    daemons.track(child)
    assert is_alive(child)
    assert stat_fields(child)[1] == str(pid)
    return pid, child


def test_stop_group_stops_the_daemons_children_too(daemons: Daemons, tmp_path: Path) -> None:
    pidfile = tmp_path / "d.pid"
    pid, child = start_shell_with_child(daemons, tmp_path, pidfile)
    stopped = dk(daemons, "stop", "--group", "--pidfile", pidfile)
    assert stopped.returncode == 0, stopped.stderr
    assert wait_gone(pid, 5.0)
    assert wait_gone(child, 5.0)


def test_stop_without_group_leaves_the_children(daemons: Daemons, tmp_path: Path) -> None:
    """The control for --group: plain stop signals the daemon alone."""
    pidfile = tmp_path / "d.pid"
    pid, child = start_shell_with_child(daemons, tmp_path, pidfile)
    stopped = dk(daemons, "stop", "--pidfile", pidfile)
    assert stopped.returncode == 0, stopped.stderr
    assert wait_gone(pid, 5.0)
    time.sleep(0.2)
    assert is_alive(child)  # the fixture kills it by pid


# --- reload -------------------------------------------------------------------


def test_reload_sends_sighup(daemons: Daemons, tmp_path: Path) -> None:
    pidfile = tmp_path / "d.pid"
    log = tmp_path / "hup.log"
    launch = dk(
        daemons,
        "start",
        "--notify",
        "--pidfile",
        pidfile,
        "--",
        sys.executable,
        "-c",
        RECORDS_HUP,
        log,
    )
    assert launch.returncode == 0, launch.stderr
    pid = daemon_pid(daemons, pidfile)
    assert not log.exists()
    reloaded = dk(daemons, "reload", "--pidfile", pidfile)
    assert reloaded.returncode == 0, reloaded.stderr
    assert f"SIGHUP to pid {pid}" in reloaded.stdout
    assert wait_for_line(log) == "HUP\n"
    assert is_alive(pid)
    stopped = dk(daemons, "stop", "--pidfile", pidfile)
    assert stopped.returncode == 0, stopped.stderr
    assert wait_gone(pid, 5.0)


def test_reload_when_not_running(daemons: Daemons, tmp_path: Path) -> None:
    reloaded = dk(daemons, "reload", "--pidfile", tmp_path / "d.pid")
    assert reloaded.returncode == 7
    assert "not running" in reloaded.stderr


# --- restart ------------------------------------------------------------------


def test_restart_replaces_a_running_daemon(daemons: Daemons, tmp_path: Path) -> None:
    pidfile = tmp_path / "d.pid"
    old = start_sleep(daemons, pidfile)
    launch = dk(daemons, "restart", "--pidfile", pidfile, "--", "sleep", "30")
    assert launch.returncode == 0, launch.stderr
    new = daemon_pid(daemons, pidfile)
    assert new != old
    assert wait_gone(old, 5.0)
    assert is_alive(new)
    assert cmdline(new) == ["sleep", "30"]
    status = dk(daemons, "status", "--pidfile", pidfile)
    assert status.returncode == 0
    assert f"running (pid {new}" in status.stdout


def test_restart_with_a_missing_command_leaves_the_daemon_running(
    daemons: Daemons, tmp_path: Path
) -> None:
    """A typo in the new command is found before the running daemon is stopped."""
    pidfile = tmp_path / "d.pid"
    old = start_sleep(daemons, pidfile)
    launch = dk(daemons, "restart", "--pidfile", pidfile, "--", "no-such-command-dk")
    assert launch.returncode == 5, launch.stderr
    assert "command not found: no-such-command-dk" in launch.stderr
    assert is_alive(old)
    assert daemon_pid(daemons, pidfile) == old


def test_stop_takes_a_signal_number(daemons: Daemons, tmp_path: Path) -> None:
    """``--signal 15`` is SIGTERM, as ``--retry 15/5`` already allowed."""
    pidfile = tmp_path / "d.pid"
    old = start_sleep(daemons, pidfile)
    launch = dk(daemons, "stop", "--pidfile", pidfile, "--signal", "15")
    assert launch.returncode == 0, launch.stderr
    assert "SIGTERM" in launch.stderr
    assert wait_gone(old, 5.0)


def test_restart_when_not_running_starts(daemons: Daemons, tmp_path: Path) -> None:
    pidfile = tmp_path / "d.pid"
    launch = dk(daemons, "restart", "--pidfile", pidfile, "--", "sleep", "30")
    assert launch.returncode == 0, launch.stderr
    pid = daemon_pid(daemons, pidfile)
    assert is_alive(pid)
    assert cmdline(pid) == ["sleep", "30"]


# --- run ----------------------------------------------------------------------


def test_run_execs_in_the_foreground(daemons: Daemons) -> None:
    launch = dk(daemons, "run", "--", "sh", "-c", 'echo "hi $$"; exit 4')
    assert launch.returncode == 4, launch.stderr
    assert launch.stdout == f"hi {last_launcher(daemons)}\n"


# --- help and entry points ----------------------------------------------------


@pytest.mark.parametrize(
    "subcommand", [[], ["start"], ["stop"], ["status"], ["reload"], ["restart"], ["run"]]
)
def test_help_documents_the_exit_codes(daemons: Daemons, subcommand: list[str]) -> None:
    launch = dk(daemons, *subcommand, "--help")
    assert launch.returncode == 0, launch.stderr
    assert launch.stdout.startswith("usage: daemonkit")
    assert "exit codes" in launch.stdout
    assert "status               0 running" in launch.stdout


def test_python_dash_m_daemonkit_without_a_command(daemons: Daemons) -> None:
    launch = dk(daemons)
    assert launch.returncode == 2
    assert "usage: daemonkit" in launch.stderr
