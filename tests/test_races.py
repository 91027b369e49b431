"""Races between launchers, ``stop``, ``restart``, ``status`` and the daemon itself (§8).

Concurrent starts give exactly one daemon, whichever way they overlap;
``stop`` racing ``start``, the daemon's own exit or another ``stop`` leaves a
consistent state and answers with LSB codes (stopping a stopped service is
success); ``status`` never names a pid that does not hold the lock.

Every daemon is a real process started through ``python -m daemonkit`` or a
``DaemonContext`` script; each pid is tracked by the ``daemons`` fixture (or
killed by pid by the subreaper helper that started it) as soon as it is
known. Programs carry a marker argument (``sleep 41.123``) so that a stray
one, started by no launcher that admits it, would be found in /proc.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemons, is_alive, wait_gone, wait_until
from test_cli import DAEMONKIT, NOTIFY, dk, processes_running
from test_pidfile_daemon import read_line

from daemonkit import PIDFile, control
from daemonkit.errors import DaemonError
from daemonkit.pidfile import PIDStatus

pytestmark = pytest.mark.timeout(60)


def marker(tag: int) -> list[str]:
    """A ``sleep`` command line no other test uses: found in /proc by its argv."""
    return ["sleep", f"41.{os.getpid() % 1000:03d}{tag:03d}"]


def popen_dk(daemons: Daemons, *args: str | Path, cwd: Path) -> subprocess.Popen[str]:
    """Start ``python -m daemonkit ARGS`` without waiting (tracked for cleanup)."""
    proc = subprocess.Popen(
        [*DAEMONKIT, *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )
    daemons.track(proc.pid)
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = 30.0) -> tuple[int, str]:
    """The exit code and stderr of a process, failing fast if it hangs."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"{proc.args!r} hung for {timeout} s; stderr: {err!r}")
    return proc.returncode, err


def track_markers(daemons: Daemons, argv: list[str]) -> list[int]:
    """Live processes running ``argv``, each tracked for cleanup."""
    found = processes_running(argv)
    for pid in found:
        daemons.track(pid)
    return found


def pidfile_pid(path: Path) -> int | None:
    text = path.read_text() if path.exists() else ""
    return int(text) if re.fullmatch(r"[1-9][0-9]*\n", text) else None


def assert_consistent(daemons: Daemons, path: Path, argv: list[str]) -> int | None:
    """Exactly one of: no daemon (and no live holder), or one daemon the pidfile names.

    Returns the running daemon's pid, if any. A process running ``argv``
    that the pidfile does not name would be a daemon nobody can stop.
    """
    time.sleep(0.25)  # a program exec'd late would have shown up by now
    alive = track_markers(daemons, argv)
    found = control.status(path)
    if not alive:
        assert found.code in (1, 3), (found.state, found.pid)
        return None
    assert len(alive) == 1, f"more than one daemon: {alive}"
    assert (found.state, found.pid) == (PIDStatus.RUNNING, alive[0]), alive
    assert pidfile_pid(path) == alive[0]
    return alive[0]


def no_traceback(err: str) -> None:
    assert "Traceback" not in err, err


# -- concurrent starts -------------------------------------------------------------


def test_twenty_concurrent_cli_starts_run_exactly_one_daemon(
    daemons: Daemons, tmp_path: Path
) -> None:
    """20 ``daemonkit start`` at once on one pidfile: one daemon, and all exit 0.

    LSB: starting a service that is already running (or being started) is
    success. The losers say so and name no pid but the winner's.
    """
    path = tmp_path / "d.pid"
    argv = marker(1)
    procs = [popen_dk(daemons, "start", "--pidfile", path, "--", *argv, cwd=tmp_path)]
    procs += [
        popen_dk(daemons, "start", "--pidfile", path, "--", *argv, cwd=tmp_path) for _ in range(19)
    ]
    outcomes = [finish(proc) for proc in procs]
    daemon = assert_consistent(daemons, path, argv)
    assert daemon is not None, outcomes
    assert [code for code, _ in outcomes] == [0] * 20, outcomes
    already = [err for _, err in outcomes if "already running" in err]
    assert len(already) == 19, outcomes
    for err in already:
        no_traceback(err)
        assert re.findall(r"running as pid (\d+)", err) in ([], [str(daemon)]), err
    assert dk(daemons, "stop", "--pidfile", path).returncode == 0
    assert wait_gone(daemon, 5.0)
    assert not path.exists()


# argv: REPORT PIDFILE GO_FD READY_FILE
SLOW_TO_BE_READY = """\
PATH, GO, READY_FILE = sys.argv[2], int(sys.argv[3]), sys.argv[4]
print("set", flush=True)
os.read(GO, 1)
with daemonkit.DaemonContext(pidfile=daemonkit.PIDFile(PATH), wait_ready=True, ready_timeout=30):
    facts.report(REPORT + ".body." + str(os.getpid()))
    deadline = time.monotonic() + 30
    while not os.path.exists(READY_FILE):  # not ready until the test says so
        assert time.monotonic() < deadline
        time.sleep(0.01)
    daemonkit.ready()
    linger()
"""


def bodies(folder: Path) -> list[int]:
    """Pids of the daemon bodies that ran (each wrote ``rN.body.PID``)."""
    names = [path.name for path in folder.glob("r*.body.*")]
    return [int(name.rsplit(".", 1)[1]) for name in names if re.fullmatch(r"r\d+\.body\.\d+", name)]


def test_launchers_racing_a_daemon_that_is_still_starting(daemons: Daemons, tmp_path: Path) -> None:
    """19 launchers race while the first daemon holds the lock but is not ready yet.

    The variant of test_pidfile_daemon's twenty launchers where the race is
    won by a daemon still in its startup: every other launcher must be
    refused at once with ``AlreadyRunningError`` (naming that daemon or
    "starting"), no second body may run, and the first launcher still exits
    0 once its daemon is ready.
    """
    path = tmp_path / "d.pid"
    ready_file = tmp_path / "ready"
    script = daemons.script(SLOW_TO_BE_READY)
    go = [os.pipe() for _ in range(2)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(20):
            go_read = go[0 if index == 0 else 1][0]
            proc = subprocess.Popen(
                [
                    sys.executable,
                    str(script),
                    str(tmp_path / f"r{index}"),
                    str(path),
                    str(go_read),
                    str(ready_file),
                ],
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
            assert read_line(proc) == b"set\n"
        os.close(go[0][1])  # the first launcher goes
        go[0] = (go[0][0], -1)
        assert wait_until(lambda: bodies(tmp_path) != [], 10)
        [first] = bodies(tmp_path)
        daemons.track(first)
        assert control.status(path).pid == first
        os.close(go[1][1])  # the other 19 race the daemon that is not ready yet
        go[1] = (go[1][0], -1)
    finally:
        for read_end, write_end in go:
            os.close(read_end)
            if write_end != -1:
                os.close(write_end)
    losers: list[tuple[int, str]] = []
    for proc in procs[1:]:
        _, raw = proc.communicate(timeout=30)
        losers.append((proc.returncode, raw.decode()))
    assert procs[0].poll() is None, "the first launcher left before its daemon was ready"
    for code, text in losers:
        assert code == 1, text
        assert "AlreadyRunningError" in text, text
        assert re.findall(r"running as pid (\d+)", text) in ([], [str(first)]), text
    ready_file.touch()
    _, raw = procs[0].communicate(timeout=30)
    assert procs[0].returncode == 0, raw.decode()
    assert bodies(tmp_path) == [first], "a second daemon body ran"
    assert control.status(path).pid == first
    assert dk(daemons, "stop", "--pidfile", path).returncode == 0
    assert wait_gone(first, 5.0)
    assert not path.exists()


# -- stop racing start -------------------------------------------------------------


@pytest.mark.timeout(120)
def test_stop_racing_start_leaves_a_consistent_state(daemons: Daemons, tmp_path: Path) -> None:
    """``start`` and ``stop`` launched together, the stop a little later each round.

    Whatever the interleaving: no traceback; stop exits 0 (stopped, or
    nothing was running yet) or 1 only while the daemon was "starting" (it
    could not stop it, and says so); a start that exits 1 says the daemon
    died before it was ready; and afterwards either no daemon runs, or
    exactly one, named by the pidfile. Never an orphan nobody can stop.
    """
    path = tmp_path / "d.pid"
    seen: dict[tuple[int, int], int] = {}
    for round_ in range(16):
        argv = marker(100 + round_)
        start = popen_dk(daemons, "start", "--pidfile", path, "--", *argv, cwd=tmp_path)
        time.sleep(0.02 * round_)
        stopper = popen_dk(daemons, "stop", "--pidfile", path, cwd=tmp_path)
        start_code, start_err = finish(start)
        stop_code, stop_err = finish(stopper)
        seen[start_code, stop_code] = seen.get((start_code, stop_code), 0) + 1
        no_traceback(start_err)
        no_traceback(stop_err)
        assert start_code in (0, 1), start_err
        if start_code == 1:
            assert "before it was ready" in start_err or "at once" in start_err, start_err
        assert stop_code in (0, 1), stop_err
        if stop_code == 1:
            assert "starting" in stop_err, stop_err
        stopped = re.search(r"stopped \(pid (\d+)", stop_err)
        if stopped:
            assert wait_gone(int(stopped.group(1)), 5.0)
        daemon = assert_consistent(daemons, path, argv)
        if daemon is not None:
            assert stop_code == 1 or not stopped, (stop_err, daemon)
            assert dk(daemons, "stop", "--pidfile", path).returncode == 0
            assert wait_gone(daemon, 5.0)
        assert control.status(path).code == 3, f"round {round_}: {control.status(path).state}"
    # The rounds covered more than one interleaving.
    assert len(seen) > 1, seen


# Calls control.stop without pause for SECONDS: each call that finds the pidfile
# unlocked (stale) takes its lock for an instant and removes it. argv: PIDFILE SECONDS
STOP_LOOP = """\
import sys, time
from daemonkit import PIDFile, control
from daemonkit.errors import DaemonError
path, seconds = sys.argv[1], float(sys.argv[2])
print("looping", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    control.stop(path)
"""


def test_a_start_racing_the_removal_of_a_stale_pidfile_is_not_refused(
    daemons: Daemons, tmp_path: Path
) -> None:
    """Starts (the pidfile step of every start: ``PIDFile.lock``) while a ``stop``
    loop removes the pidfile whenever it finds it unlocked.

    Nothing runs, so every start must get the lock: a file removed between
    the starter's open and its checks must be opened again, not refused as
    "0 hard links, remove it" (it is already gone); stop's instant of
    cleanup is not a running daemon.
    """
    path = tmp_path / "d.pid"
    looper = subprocess.Popen(
        [sys.executable, "-c", STOP_LOOP, str(path), "2"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    daemons.track(looper.pid)
    assert read_line(looper) == b"looping\n"
    refusals: dict[str, int] = {}
    starts = 0
    while looper.poll() is None:
        lock = PIDFile(path)
        try:
            lock.lock(0)
        except DaemonError as exc:
            key = f"{type(exc).__name__}: {str(exc).replace(str(path), 'P')[:60]}"
            refusals[key] = refusals.get(key, 0) + 1
            continue
        starts += 1
        lock.release()
    looper.wait(10)
    assert looper.stdout is not None
    looper.stdout.close()
    assert starts > 100
    assert not refusals, f"{sum(refusals.values())} refusals in {starts} starts: {refusals}"


# -- stop racing the daemon's own exit ------------------------------------------------

# A program (started with --notify) that exits by itself the moment someone
# opens its pidfile, as stop does first: inotify IN_OPEN. Its thousands of
# open descriptors (a server's connections) make its exit take a while, as a
# real one's does. argv: PIDFILE PIDOUT
EXITS_WHEN_LOOKED_AT = (
    NOTIFY
    + """\
import ctypes, sys
PIDFILE, PIDOUT = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
watch = libc.inotify_init1(os.O_CLOEXEC)
assert watch >= 0 and libc.inotify_add_watch(watch, PIDFILE.encode(), 0x20) >= 0  # IN_OPEN
held = [os.open("/dev/null", os.O_RDONLY) for _ in range(3000)]
with open(PIDOUT + ".tmp", "w") as out:
    out.write(str(os.getpid()))
os.rename(PIDOUT + ".tmp", PIDOUT)
notify("READY=1")
os.read(watch, 4096)  # stop (or anyone) opened the pidfile: leave now, by ourselves
os._exit(0)
"""
)

# Runs ROUNDS rounds of: start the program above, then stop it (through the
# library or the command), and records what stop said. It is a child
# subreaper that reaps orphans at once, as a real init does, so a daemon that
# exits is gone, not a zombie, a moment later. argv: OUT ROUNDS HOW DIR PROGRAM
STOP_RACE_HELPER = r"""
import ctypes, json, os, signal, subprocess, sys, threading, time
assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
out, rounds, how, folder, program = sys.argv[1:6]
rounds = int(rounds)
ours = set()  # our Popen children: subprocess reaps those itself


def reaper():
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            time.sleep(0.002)
            continue
        if info is not None and info.si_pid not in ours:
            try:
                os.waitpid(info.si_pid, 0)
            except ChildProcessError:
                pass
        else:
            time.sleep(0.0005)


threading.Thread(target=reaper, daemon=True).start()
from daemonkit import PIDFile, control
from daemonkit.errors import DaemonError

dk = [sys.executable, "-m", "daemonkit"]


def run(args):
    proc = subprocess.Popen(dk + args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ours.add(proc.pid)
    out_, err = proc.communicate(timeout=30)
    return proc.returncode, err


results = []
for index in range(rounds):
    path = os.path.join(folder, f"d{index}.pid")
    pidout = os.path.join(folder, f"pid{index}")
    code, err = run(["start", "--notify", "--pidfile", path, "--", sys.executable, "-c",
                     program, path, pidout])
    entry = {"start": code, "start_err": err}
    if code == 0:
        with open(pidout) as f:
            entry["pid"] = int(f.read())
        try:
            if how == "library":
                result = control.stop(path, timeout=10)
                entry["code"], entry["message"] = result.code, result.message
            else:
                entry["code"], entry["message"] = run(["stop", "--pidfile", path])
        except Exception as exc:
            entry["code"], entry["message"] = None, repr(exc)
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{entry['pid']}") and time.monotonic() < deadline:
            time.sleep(0.005)
        entry["daemon_left"] = os.path.exists(f"/proc/{entry['pid']}")
        if entry["daemon_left"]:
            os.kill(entry["pid"], signal.SIGKILL)  # our child: its pid cannot be reused yet
        entry["pidfile_left"] = os.path.exists(path)
    results.append(entry)
with open(out, "w") as f:
    json.dump(results, f)
"""


@pytest.mark.parametrize("how", ["library", "command"])
@pytest.mark.timeout(120)
def test_stop_racing_the_daemons_own_exit(daemons: Daemons, tmp_path: Path, how: str) -> None:
    """The daemon exits by itself just as stop looks at it: stop still succeeds.

    LSB: stopping a service that is (now) stopped is success. stop must
    exit 0 whichever side of the daemon's exit it looked at, never raise,
    and leave no pidfile behind (the program, exec'd by ``start``, cannot
    remove it itself).
    """
    helper = tmp_path / "stop_race.py"
    helper.write_text(STOP_RACE_HELPER)
    out = tmp_path / "results.json"
    rounds = 8
    program = EXITS_WHEN_LOOKED_AT
    proc = subprocess.run(
        [sys.executable, str(helper), str(out), str(rounds), how, str(tmp_path), program],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 0, proc.stderr
    results: list[dict[str, Any]] = json.loads(out.read_text())
    for entry in results:
        if "pid" in entry:
            daemons.track(entry["pid"])
    assert [entry["start"] for entry in results] == [0] * rounds, results
    assert not [entry for entry in results if entry["daemon_left"]], results
    wrong = [
        (entry["code"], entry["message"], entry["pidfile_left"])
        for entry in results
        if entry["code"] != 0 or entry["pidfile_left"]
    ]
    assert not wrong, f"{len(wrong)} of {rounds} rounds: {wrong}"


# -- stop racing stop --------------------------------------------------------------

MANY_DESCRIPTORS = (
    NOTIFY
    + """\
import signal, sys, time
held = [os.open("/dev/null", os.O_RDONLY) for _ in range(int(sys.argv[1]))]
notify("READY=1")
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.05)
"""
)


@pytest.mark.timeout(120)
def test_two_stops_at_once_both_succeed(daemons: Daemons, tmp_path: Path) -> None:
    """Two ``stop`` at once: both exit 0 (stopping a stopped service is success),
    the daemon is gone with its pidfile, and each says only a notice.

    The daemon holds 3000 descriptors (a server's connections), so its exit
    takes long enough for the second stop to look at it mid-exit every
    time. (With a bare ``sleep`` the same failure shows under load only.)
    """
    for round_ in range(6):
        path = tmp_path / f"d{round_}.pid"
        command = [sys.executable, "-c", MANY_DESCRIPTORS, "3000"]
        launch = dk(daemons, "start", "--notify", "--pidfile", path, "--", *command)
        assert launch.returncode == 0, launch.stderr
        pid = pidfile_pid(path)
        assert pid is not None
        daemons.track(pid)
        stoppers = [popen_dk(daemons, "stop", "--pidfile", path, cwd=tmp_path) for _ in range(2)]
        outcomes = [finish(proc) for proc in stoppers]
        assert wait_gone(pid, 5.0)
        for code, err in outcomes:
            assert code == 0, outcomes
            assert re.fullmatch(r"daemonkit: (stopped \(pid \d+, .*\)|not running)\n", err), err
        assert any("stopped (pid" in err for _, err in outcomes), outcomes
        assert not path.exists()


# -- restart racing restart ------------------------------------------------------------


@pytest.mark.timeout(120)
def test_two_restarts_at_once_leave_one_daemon(daemons: Daemons, tmp_path: Path) -> None:
    """Two ``restart`` at once, over a running daemon, several rounds.

    Afterwards exactly one daemon runs, named by the pidfile, the old one is
    gone, and neither restart printed a traceback. A restart that exits 1
    must say why (its stop found the other's daemon starting, or its new
    daemon was stopped by the other before it was ready).
    """
    path = tmp_path / "d.pid"
    argv = marker(300)
    launch = dk(daemons, "start", "--pidfile", path, "--", *argv)
    assert launch.returncode == 0, launch.stderr
    outcomes_seen = []
    for _ in range(5):
        old = assert_consistent(daemons, path, argv)
        assert old is not None
        procs = [
            popen_dk(daemons, "restart", "--pidfile", path, "--", *argv, cwd=tmp_path)
            for _ in range(2)
        ]
        outcomes = [finish(proc) for proc in procs]
        outcomes_seen.append([code for code, _ in outcomes])
        for code, err in outcomes:
            no_traceback(err)
            assert code in (0, 1), err
            if code == 1:
                assert "starting" in err or "before it was ready" in err or "at once" in err, err
        assert wait_gone(old, 5.0)
        now = assert_consistent(daemons, path, argv)
        if now is None:  # both new daemons were stopped by the other restart
            launch = dk(daemons, "start", "--pidfile", path, "--", *argv)
            assert launch.returncode == 0, launch.stderr
    daemon = assert_consistent(daemons, path, argv)
    assert daemon is not None
    assert dk(daemons, "stop", "--pidfile", path).returncode == 0
    assert wait_gone(daemon, 5.0)


# -- status during start ---------------------------------------------------------------

# Polls control.status in a loop; one JSON line per answer: [before, after, state, pid].
# argv: PIDFILE OUT STOPFILE
STATUS_POLLER = """\
import json, os, sys, time
from daemonkit import PIDFile, control
from daemonkit.errors import DaemonError
path, out, stop_file = sys.argv[1:4]
with open(out, "w") as log:
    while not os.path.exists(stop_file):
        before = time.monotonic()
        found = control.status(path)
        log.write(json.dumps([before, time.monotonic(), found.state, found.pid]) + "\\n")
"""


@pytest.mark.timeout(120)
def test_status_during_start_and_stop_never_names_a_pid_without_the_lock(
    daemons: Daemons, tmp_path: Path
) -> None:
    """Status polled without pause through 8 start/stop cycles on one pidfile.

    Every pid it reports as running must be the daemon of the cycle under
    way at that moment (the launcher, the intermediate process, the
    previous cycle's daemon, a pid left in the file: never); while no pid is
    written yet it says "starting" with no pid.
    """
    path = tmp_path / "d.pid"
    out = tmp_path / "status.log"
    stop_file = tmp_path / "stop-polling"
    poller = subprocess.Popen(
        [sys.executable, "-c", STATUS_POLLER, str(path), str(out), str(stop_file)],
        stdin=subprocess.DEVNULL,
    )
    daemons.track(poller.pid)
    lives: list[tuple[int, float, float]] = []
    try:
        assert wait_until(out.exists, 10)
        for cycle in range(8):
            began = time.monotonic()
            argv = marker(400 + cycle)
            launch = dk(daemons, "start", "--pidfile", path, "--", *argv)
            assert launch.returncode == 0, launch.stderr
            pid = pidfile_pid(path)
            assert pid is not None
            daemons.track(pid)
            time.sleep(0.05)
            stopped = dk(daemons, "stop", "--pidfile", path)
            assert stopped.returncode == 0, stopped.stderr
            assert wait_gone(pid, 5.0)
            lives.append((pid, began, time.monotonic()))
    finally:
        stop_file.touch()
        poller.wait(10)
    answers = [json.loads(line) for line in out.read_text().splitlines() if line.endswith("]")]
    states = {state for _, _, state, _ in answers}
    assert {"running", "absent"} <= states, states
    for before, after, state, pid in answers:
        if state == "starting":
            assert pid is None
        if state != "running":
            continue
        assert any(
            pid == life and began <= after and before <= ended for life, began, ended in lives
        ), (before, after, pid, lives)
    running = [pid for _, _, state, pid in answers if state == "running"]
    assert set(running) <= {pid for pid, _, _ in lives}
    assert not [pid for pid, _, _ in lives if is_alive(pid)]


# Takes the pidfile's lock without writing a pid (as a stop removing a stale
# file does, or a start before its daemon writes), says "locked", holds it for
# SECONDS, then removes the file. argv: PIDFILE SECONDS
LOCK_EMPTY_FOR = """\
import sys, time
from daemonkit import PIDFile
lock = PIDFile(sys.argv[1])
lock.lock(0)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
"""


@pytest.mark.timeout(60)
def test_stop_waits_out_a_lock_held_without_a_pid(daemons: Daemons, tmp_path: Path) -> None:
    """A pidfile locked with no pid yet is "starting" only for an instant: stop
    waits for it to resolve instead of failing (the CI failure of stop 13,
    where a second ``stop`` met the first one's removal of the stale file).
    """
    path = tmp_path / "d.pid"
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_EMPTY_FOR, str(path), "0.5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    daemons.track(holder.pid)
    assert holder.stdout is not None
    assert holder.stdout.readline() == "locked\n"
    assert control.status(path).state == PIDStatus.STARTING
    code, err = finish(popen_dk(daemons, "stop", "--pidfile", path, cwd=tmp_path))
    assert holder.wait(timeout=10) == 0
    assert (code, err) == (0, "daemonkit: not running\n")
    assert not path.exists()
