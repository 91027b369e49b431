"""A recycled pid is never signalled (DESIGN §8), staged for real in a PID namespace.

The situation every pidfile tool must survive: the daemon was ``kill -9``-ed,
its pidfile stayed behind, and the kernel gave that very pid to an unrelated
process. Here it is created on purpose, not simulated: a helper script runs
as PID 1 of a private PID namespace (``unshare --pid --fork --mount-proc``,
root only), starts a daemon with ``daemonkit start``, kills it with SIGKILL,
reaps it, and then writes ``pid - 1`` to the namespace's
``/proc/sys/kernel/ns_last_pid`` so that the next process it spawns, a
*bystander*, gets exactly the dead daemon's pid. Nothing else runs in the
namespace, so no other fork can take the pid first.

The bystander traps every catchable signal and appends each one to a record
file. With the pidfile now naming it, every control path is run against the
pidfile: ``daemonkit stop`` (plain, ``--signal KILL``, ``--group``,
``--retry``), ``reload``, ``restart``, ``status`` and the library's
``daemonkit.control.stop/reload/status``. The bystander must record nothing,
have nothing pending (``SigPnd``/``ShdPnd``), still be alive and not stopped;
the commands must give the documented LSB codes and messages; and a plain
``start`` must then take the stale file over. At the end the helper signals
the bystander itself (SIGUSR1) as a positive control: the recorder does see a
signal that reaches it, so a silent record means no signal was sent.

Two bystanders: an unrelated command line, and a look-alike with the
daemon's exact argv that even has the pidfile open (but holds no lock), so
neither the command line nor an open descriptor may be taken for proof.

Pids in the helper's report are the namespace's: they are never signalled
from here. The namespace ends when its PID 1 (the helper) exits; if it does
not exit in time, its outer pid is SIGKILLed, which kills everything inside.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT_DIR, Daemons, clean_env, is_alive, wait_gone

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a PID namespace needs root")

# The bystander (and, for the look-alike case, the daemon too): traps every
# catchable signal and records it. argv: RECORD. With $TRAP_OPEN set, it also
# keeps that file open (read-only, no lock).
TRAP = """\
import os, signal, sys
RECORD = sys.argv[1]
fd = os.open(RECORD, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
def on_signal(signum, frame):
    os.write(fd, f"sig {signum}\\n".encode())
for sig in sorted(signal.valid_signals()):
    if sig in (signal.SIGKILL, signal.SIGSTOP):
        continue
    try:
        signal.signal(sig, on_signal)
    except (OSError, ValueError, RuntimeError):
        pass  # reserved by the C library
if os.environ.get("TRAP_OPEN"):
    kept = os.open(os.environ["TRAP_OPEN"], os.O_RDONLY)
os.write(fd, f"ready {os.getpid()}\\n".encode())
while True:
    signal.pause()
"""

# PID 1 of the namespace. argv: WORKDIR SCENARIO RESULT
HELPER = r"""
import fcntl, json, os, signal, subprocess, sys, time
WORK, SCENARIO, RESULT = sys.argv[1], sys.argv[2], sys.argv[3]
PIDFILE = os.path.join(WORK, "d.pid")
TRAP = os.path.join(WORK, "trap.py")
RECORD = os.path.join(WORK, "record.txt")
DK = [sys.executable, "-m", "daemonkit"]
PROGRAM = [sys.executable, TRAP, RECORD]
out = {"init_pid": os.getpid(), "steps": {}}


def save():
    with open(RESULT + ".tmp", "w") as f:
        json.dump(out, f, indent=1)
    os.rename(RESULT + ".tmp", RESULT)


def dk(label, *args):
    proc = subprocess.run([*DK, *args], capture_output=True, text=True, timeout=20,
                          stdin=subprocess.DEVNULL)
    out["steps"][label] = {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
    return proc


def reap_zombies():
    # Orphans (the killed daemon, the double fork's middle process) are ours.
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def status_fields(pid):
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
    except OSError:
        pass  # gone: the caller sees that in its state
    return fields


def record_lines():
    with open(RECORD) as f:
        return f.read().splitlines()


def read_pidfile():
    with open(PIDFILE) as f:
        return f.read()


try:
    assert os.getpid() == 1, os.getpid()
    # 1. A real daemon, started by daemonkit, writes its pid.
    open(RECORD, "w").close()
    daemon_command = PROGRAM
    if SCENARIO == "orphan_lock":
        # The program leaves a child behind that inherited the pidfile's lock.
        daemon_command = ["sh", "-c", 'sleep 300 & exec "$0" "$@"', *PROGRAM]
    start = dk("start", "start", "--pidfile", PIDFILE, "--", *daemon_command)
    assert start.returncode == 0, start.stderr
    daemon = int(read_pidfile())
    out["daemon_pid"] = daemon
    assert wait_for(lambda: f"ready {daemon}" in record_lines()), record_lines()
    dk("status_running", "status", "--pidfile", PIDFILE)

    # 2. kill -9: the file stays behind; reap the daemon so its pid is free.
    os.kill(daemon, signal.SIGKILL)
    assert wait_for(lambda: (reap_zombies(), state(daemon) == "gone")[1]), state(daemon)
    out["pidfile_after_kill"] = read_pidfile()

    # 3. The bystander gets exactly that pid.
    open(RECORD, "w").close()
    if SCENARIO in ("lookalike", "orphan_lock"):
        argv, env = PROGRAM, dict(os.environ, TRAP_OPEN=PIDFILE)
    else:
        argv, env = [sys.executable, TRAP, RECORD, "--unrelated"], dict(os.environ)
    with open("/proc/sys/kernel/ns_last_pid", "r+") as last:
        fcntl.flock(last, fcntl.LOCK_EX)
        last.write(str(daemon - 1))
        last.flush()
        bystander = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
        fcntl.flock(last, fcntl.LOCK_UN)
    out["bystander_pid"] = bystander.pid
    assert bystander.pid == daemon, (bystander.pid, daemon)
    assert wait_for(lambda: f"ready {daemon}" in record_lines()), record_lines()
    with open(f"/proc/{daemon}/cmdline", "rb") as f:
        out["bystander_argv"] = f.read().decode().split("\0")[:-1]
    out["program_argv"] = PROGRAM

    # 4. Every control path, against the pidfile that now names the bystander.
    dk("status", "status", "--pidfile", PIDFILE)
    dk("status_json", "status", "--json", "--pidfile", PIDFILE)
    dk("stop", "stop", "--pidfile", PIDFILE, "--timeout", "0.5")
    dk("stop_kill", "stop", "--pidfile", PIDFILE, "--signal", "KILL", "--timeout", "0.5")
    dk("stop_group", "stop", "--pidfile", PIDFILE, "--group", "--timeout", "0.5")
    dk("stop_retry", "stop", "--pidfile", PIDFILE, "--retry", "TERM/0.5/KILL/0.5")
    dk("reload", "reload", "--pidfile", PIDFILE)
    dk("reload_usr1", "reload", "--pidfile", PIDFILE, "--signal", "USR1")
    dk("restart", "restart", "--pidfile", PIDFILE, "--retry", "TERM/0.5/KILL/0.5",
       "--", *PROGRAM)
    out["pidfile_after_commands"] = read_pidfile()

    import daemonkit.control as control
    import daemonkit.pidfile as pidfile
    lib = {}
    found = control.status(PIDFILE)
    lib["status"] = [found.state, found.pid, found.code, found.running, found.describe()]
    for label, kwargs in (("stop", {}), ("stop_group_retry",
                                         {"group": True, "retry": "TERM/0.5/KILL/0.5"})):
        result = control.stop(PIDFILE, timeout=0.5, **kwargs)
        lib[label] = [result.was_running, result.stopped, result.code, result.signals,
                      result.message]
    for label, sig in (("reload", "HUP"), ("reload_term", "TERM")):
        found = control.reload(PIDFILE, sig)
        lib[label] = [found.state, found.pid, found.code, found.running]
    found = pidfile.status(PIDFILE)
    lib["pidfile_status"] = [found.state, found.pid, found.running]
    lib["read_pid"] = pidfile.read_pid(PIDFILE)
    out["library"] = lib

    time.sleep(0.2)  # a signal sent above has long been handled by now
    fields = status_fields(daemon)
    out["bystander_after"] = {
        "state": state(daemon),
        "exited": bystander.poll(),
        "record": record_lines(),
        "SigPnd": fields.get("SigPnd", "gone"),
        "ShdPnd": fields.get("ShdPnd", "gone"),
    }

    # 5. A plain start takes the stale file over; stopping it spares the bystander.
    if SCENARIO != "orphan_lock":  # else the lock is still held: nothing to take over
        dk("start_again", "start", "--pidfile", PIDFILE, "--", "sleep", "300")
        out["pidfile_after_start"] = read_pidfile()
        dk("status_new", "status", "--pidfile", PIDFILE)
        dk("stop_new", "stop", "--pidfile", PIDFILE)
        reap_zombies()
        out["pidfile_exists_after_stop"] = os.path.exists(PIDFILE)
        out["bystander_at_end"] = {"state": state(daemon), "record": record_lines()}

    # 6. Positive control: a signal that does reach the bystander is recorded.
    if bystander.poll() is None:
        os.kill(daemon, signal.SIGUSR1)
        wait_for(lambda: f"sig {int(signal.SIGUSR1)}" in record_lines(), 5)
    out["control_record"] = record_lines()
    bystander.kill()
    bystander.wait(5)
    out["done"] = True
except BaseException as exc:
    import traceback
    out["error"] = traceback.format_exc()
finally:
    save()
# Leaving PID 1 ends the namespace: the kernel kills whatever is left inside.
"""


def unshare_or_skip() -> list[str]:
    """The unshare command for a private PID namespace, or skip saying why it is unusable."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare(1) from util-linux")
    command = [unshare, "--pid", "--fork", "--mount-proc", "--kill-child"]
    try:
        check = subprocess.run(
            [*command, sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("unshare --pid did not finish")
    if check.returncode != 0 or check.stdout.strip() != "1":
        pytest.skip(f"unshare --pid is not permitted here: {check.stderr.strip()}")
    return command


def namespace_init(unshare_pid: int) -> int | None:
    """The outer pid of the namespace's PID 1: the child unshare forked."""
    try:
        children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def run_in_namespace(daemons: Daemons, tmp_path: Path, scenario: str) -> dict[str, Any]:
    """Run HELPER as PID 1 of a new PID namespace; return its report."""
    command = unshare_or_skip()
    work = tmp_path / "ns"
    work.mkdir()
    (work / "trap.py").write_text(TRAP)
    helper = tmp_path / "helper.py"
    helper.write_text(HELPER)
    result = tmp_path / "result.json"
    env = clean_env(PYTHONPATH=str(PROJECT_DIR))
    proc = subprocess.Popen(
        [*command, sys.executable, str(helper), str(work), scenario, str(result)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    daemons.track(proc.pid)
    init = None
    deadline = time.monotonic() + 5
    while init is None and proc.poll() is None and time.monotonic() < deadline:
        init = namespace_init(proc.pid)
        time.sleep(0.005)
    if init is not None:
        daemons.track(init)
    try:
        _, err = proc.communicate(timeout=45)
    except subprocess.TimeoutExpired:
        err = "timed out"
    finally:
        # Killing the namespace's PID 1 kills everything inside it.
        if init is not None and is_alive(init):
            os.kill(init, signal.SIGKILL)
            assert wait_gone(init, 10)
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    assert result.exists(), f"the helper wrote no report; unshare exited {proc.returncode}: {err}"
    data: dict[str, Any] = json.loads(result.read_text())
    assert "error" not in data, data.get("error", "") + f"\nsteps: {data.get('steps')}"
    assert data.get("done") is True, data
    return data


@pytest.mark.timeout(90)
@pytest.mark.parametrize("scenario", ["unrelated", "lookalike"])
def test_a_recycled_pid_is_never_signalled(daemons: Daemons, tmp_path: Path, scenario: str) -> None:
    """A pidfile left by ``kill -9`` whose pid the kernel gave to a bystander.

    Asserted: the bystander really got the dead daemon's pid (and, for
    ``lookalike``, the daemon's exact argv); no command signalled it (its
    record holds no signal, nothing is pending, it is alive and not
    stopped); status says "unknown" (4) naming the pid as not holding the
    lock, never "running"; stop exits 1 ("does not hold"), reload 7,
    restart 1 without starting anything; the library agrees; the pidfile is
    left as it was; then a plain start takes the stale file over and a stop
    of the new daemon still spares the bystander.
    """
    data = run_in_namespace(daemons, tmp_path, scenario)
    steps = data["steps"]
    daemon = data["daemon_pid"]
    assert steps["status_running"]["rc"] == 0, steps["status_running"]
    assert f"running (pid {daemon}" in steps["status_running"]["stdout"]
    # The stage: the stale file names the pid, and the bystander has it.
    assert data["pidfile_after_kill"] == f"{daemon}\n"
    assert data["bystander_pid"] == daemon
    if scenario == "lookalike":
        assert data["bystander_argv"] == data["program_argv"]
    else:
        assert data["bystander_argv"] != data["program_argv"]

    # Nothing reached the bystander.
    after = data["bystander_after"]
    assert after["record"] == [f"ready {daemon}"], after
    assert after["exited"] is None and after["state"] in ("S", "R"), after
    assert int(after["SigPnd"], 16) == 0 and int(after["ShdPnd"], 16) == 0, after
    assert data["bystander_at_end"] == {"state": after["state"], "record": [f"ready {daemon}"]}
    # The positive control: a signal that does reach it is recorded.
    assert f"sig {int(signal.SIGUSR1)}" in data["control_record"]

    # LSB codes and messages.
    unverified = f"names pid {daemon}, which is alive but does not hold the pidfile's lock"
    assert steps["status"]["rc"] == 4, steps["status"]
    assert steps["status"]["stdout"].startswith("unknown: ")
    assert unverified in steps["status"]["stdout"]
    status_json = json.loads(steps["status_json"]["stdout"])
    assert steps["status_json"]["rc"] == 4
    assert (status_json["state"], status_json["pid"], status_json["code"]) == (
        "unverified",
        daemon,
        4,
    )
    for label in ("stop", "stop_kill", "stop_group", "stop_retry"):
        assert steps[label]["rc"] == 1, (label, steps[label])
        assert unverified in steps[label]["stderr"], (label, steps[label])
        assert "stopped" not in steps[label]["stderr"], (label, steps[label])
    for label in ("reload", "reload_usr1"):
        assert steps[label]["rc"] == 7, (label, steps[label])
        assert "cannot reload: unknown:" in steps[label]["stderr"], (label, steps[label])
        assert "sent" not in steps[label]["stdout"], (label, steps[label])
    assert steps["restart"]["rc"] == 1, steps["restart"]
    assert "daemonkit: restart: unknown:" in steps["restart"]["stderr"], steps["restart"]
    # Nothing was started or rewritten on the way.
    assert data["pidfile_after_commands"] == f"{daemon}\n"

    lib = data["library"]
    assert lib["status"][:4] == ["unverified", daemon, 4, False], lib
    for label in ("stop", "stop_group_retry"):
        was_running, stopped, code, signals, message = lib[label]
        assert (was_running, stopped, code, signals) == (False, False, 1, []), (label, lib)
        assert unverified in message
    for label in ("reload", "reload_term"):
        assert lib[label] == ["unverified", daemon, 4, False], (label, lib)
    assert lib["pidfile_status"] == ["unverified", daemon, False]
    assert lib["read_pid"] is None

    # A plain start takes the stale file over; the new daemon is stopped alone.
    assert steps["start_again"]["rc"] == 0, steps["start_again"]
    new = int(data["pidfile_after_start"])
    assert new != daemon
    assert steps["status_new"]["rc"] == 0
    assert f"running (pid {new}" in steps["status_new"]["stdout"]
    assert steps["stop_new"]["rc"] == 0, steps["stop_new"]
    assert f"stopped (pid {new}" in steps["stop_new"]["stderr"]
    assert data["pidfile_exists_after_stop"] is False


@pytest.mark.timeout(90)
def test_a_recycled_pid_is_not_signalled_while_a_leftover_child_keeps_the_lock(
    daemons: Daemons, tmp_path: Path
) -> None:
    """The daemon (``sh -c 'sleep 300 & exec PROGRAM'``) leaves a child that
    inherited the pidfile's lock; the daemon is ``kill -9``-ed, and its pid
    goes to a look-alike bystander that has the pidfile open, without a lock.

    The file is locked (by the orphaned ``sleep``) and names a live pid that
    has the file open, but that process does not hold the lock. Asserted:
    no command signals the bystander; status never says it runs; stop
    cannot claim to have stopped it (1); reload says not running (7).
    """
    data = run_in_namespace(daemons, tmp_path, "orphan_lock")
    steps = data["steps"]
    daemon = data["daemon_pid"]
    assert steps["status_running"]["rc"] == 0, steps["status_running"]
    assert data["bystander_pid"] == daemon
    assert data["bystander_argv"] == data["program_argv"]
    after = data["bystander_after"]
    assert after["record"] == [f"ready {daemon}"], (after, steps)
    assert after["exited"] is None and after["state"] in ("S", "R"), after
    assert f"running (pid {daemon}" not in steps["status"]["stdout"], steps["status"]
    for label in ("stop", "stop_kill", "stop_group", "stop_retry"):
        assert steps[label]["rc"] == 1, (label, steps[label])
    for label in ("reload", "reload_usr1"):
        assert steps[label]["rc"] == 7, (label, steps[label])
