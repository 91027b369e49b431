"""daemonkit.testing, the pytest plugin: real daemons, started, watched and always cleaned up.

The first tests use the plugin's fixtures as a user would, in this very test
process: daemons are started for real (``daemonkit start``, a forked
``DaemonContext``, a program that detaches by itself), and what the fixture
says (pid, readiness, messages, exit status) is checked against the kernel's
view (``/proc``, the pidfile's lock, a file the daemon wrote).

The last tests run inner test files in a separate pytest process
(``pytester.runpytest_subprocess``): a test that fails with daemons running,
a test that leaves an orphan behind. They prove what only the end of a test
can show: every daemon is gone afterwards, by pid and kernel start time. As
a safety net, any such process still alive is tracked by the ``daemons``
fixture, which kills it by pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Daemons, is_alive, start_time, wait_until

import daemonkit
import daemonkit.notify
from daemonkit import _posix, control
from daemonkit.testing import (
    DaemonExitedError,
    DaemonRunner,
    DaemonStartError,
    NotifyRecorder,
)

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.timeout(60)

# argv[1]: a file created just before READY=1. SIGHUP: RELOADING=1 then READY=1;
# SIGUSR1: X_GOT=USR1; SIGTERM: a clean exit (status 0).
SERVICE = """\
import signal, sys, time
import daemonkit, daemonkit.notify


def on_hup(signum, frame):
    daemonkit.notify.reloading()
    daemonkit.notify.notify("READY=1")


signal.signal(signal.SIGHUP, on_hup)
signal.signal(signal.SIGUSR1, lambda signum, frame: daemonkit.notify.notify("X_GOT=USR1"))
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
daemonkit.notify.status("starting")
time.sleep(0.5)
open(sys.argv[1], "w").close()
daemonkit.ready("serving")
while True:
    time.sleep(0.05)
"""

IGNORES_TERM = """\
import signal, time
import daemonkit
signal.signal(signal.SIGTERM, signal.SIG_IGN)
daemonkit.ready()
while True:
    time.sleep(0.05)
"""

# Detaches by itself through DaemonContext; the daemon writes its pid to argv[1].
SELF_DETACHING = """\
import os, sys, time
import daemonkit
with daemonkit.DaemonContext(wait_ready=True):
    with open(sys.argv[1] + ".tmp", "w") as out:
        out.write(str(os.getpid()))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    daemonkit.ready()
    while True:
        time.sleep(0.05)
"""


def stat_fields(pid: int) -> list[str]:
    """``/proc/PID/stat`` after the command name: state, ppid, pgrp, session..."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def parent(pid: int) -> int:
    return int(stat_fields(pid)[1])


def running_children() -> set[int]:
    """The test process's children that are alive (zombies left out)."""
    return {pid for pid in _posix.children_of(os.getpid()) if is_alive(pid)}


# -- the fixtures in this test process ----------------------------------------------------


def test_start_command_waits_for_ready_and_records_every_message(
    daemon_runner: DaemonRunner, tmp_path: Path
) -> None:
    """``start_command(notify=True)`` returns only once the program sent READY=1
    (the file it creates just before exists), records its sd_notify lines in
    order with the daemon's pid as sender, and names the daemon the pidfile's
    lock names, adopted by the test process. ``stop()`` goes through the
    pidfile (``daemonkit stop``): exit status 0, and the pidfile is gone."""
    marker = tmp_path / "ready-marker"
    daemon = daemon_runner.start_command([sys.executable, "-c", SERVICE, marker], notify=True)
    assert marker.exists(), "start_command returned before READY=1"
    assert daemon.notify_messages() == ["STATUS=starting", "READY=1", "STATUS=serving"]
    assert daemon.notify is not None
    assert set(daemon.notify.senders) == {daemon.pid}
    assert daemon.pidfile is not None
    assert control.status(daemon.pidfile).pid == daemon.pid
    assert parent(daemon.pid) == os.getpid()  # adopted: the test is a subreaper
    assert daemon.launcher_exit_code == 0
    assert daemon.alive()
    assert daemon.stop() == 0
    assert not daemon.alive() and daemon.exit_status == 0
    assert not daemon.pidfile.exists()
    assert not is_alive(daemon.pid)


def test_signals_are_delivered_and_new_messages_waited_for(
    daemon_runner: DaemonRunner, tmp_path: Path
) -> None:
    """``signal()`` reaches the daemon (by name or number); ``wait_for_message``
    with ``since`` waits for a line sent after that point, not an old one
    (READY=1 was sent at start, the second one only after SIGHUP)."""
    daemon = daemon_runner.start_command(
        [sys.executable, "-c", SERVICE, tmp_path / "marker"], notify=True
    )
    before = len(daemon.notify_messages())
    daemon.signal("HUP")
    assert daemon.wait_for_message("RELOADING=1", since=before) == "RELOADING=1"
    assert daemon.wait_for_message("READY=1", since=before) == "READY=1"
    assert daemon.wait_for_message("MONOTONIC_USEC=", since=before).startswith("MONOTONIC_USEC=")
    later = len(daemon.notify_messages())
    daemon.signal(signal.SIGUSR1)
    assert daemon.wait_for_message("X_GOT=USR1", since=later) == "X_GOT=USR1"
    with pytest.raises(TimeoutError, match="X_GOT=USR2"):
        daemon.wait_for_message("X_GOT=USR2", timeout=0.3)
    assert daemon.alive()


def test_start_callable_runs_a_closure_as_a_real_daemon(
    daemon_runner: DaemonRunner, tmp_path: Path
) -> None:
    """``start_callable`` runs a closure (not picklable) in a detached daemon
    (a new session, not its leader: the double fork) with the environment
    asked for and, with ``wait_ready=True``, returns only once it called
    ``daemonkit.ready()``; the daemon's stdout is its log, the pidfile given
    as a path names it, and SIGTERM through that pidfile (the default
    signal map) ends it with status 0, read by the test, which adopted it."""
    facts = tmp_path / "facts.json"
    greeting = "hello from the daemon"

    def serve() -> None:
        stat = stat_fields(os.getpid())
        time.sleep(0.3)
        seen = {"pid": os.getpid(), "session": int(stat[3]), "flavour": os.environ["FLAVOUR"]}
        facts.write_text(json.dumps(seen))
        print(greeting, flush=True)
        daemonkit.ready()
        while True:
            time.sleep(0.05)

    pidfile = tmp_path / "serve.pid"
    daemon = daemon_runner.start_callable(
        serve, wait_ready=True, pidfile=pidfile, env={"FLAVOUR": "mint"}
    )
    assert facts.exists(), "start_callable returned before ready()"
    seen = json.loads(facts.read_text())
    assert seen == {"pid": daemon.pid, "session": seen["session"], "flavour": "mint"}
    assert seen["session"] != daemon.pid and seen["session"] != os.getsid(0)
    assert parent(daemon.pid) == os.getpid()
    assert greeting in daemon.log()
    assert daemon.pidfile == pidfile
    assert control.status(pidfile).pid == daemon.pid
    assert daemon.stop() == 0
    assert not pidfile.exists()


def test_start_callable_exit_status_and_notify(daemon_runner: DaemonRunner) -> None:
    """The function's return value is the daemon's exit status, collected by
    the test; with ``notify=True`` it reports to the handle's socket (the
    ``READY=1`` of entering the context, then its own lines)."""

    def work() -> int:
        daemonkit.notify.status("working")
        time.sleep(1.0)  # long enough to be adopted: the test collects the status
        return 3

    daemon = daemon_runner.start_callable(work, notify=True)
    assert daemon.wait_exit(10) == 3
    assert daemon.notify_messages() == ["READY=1", "STATUS=working"]
    with pytest.raises(DaemonExitedError):
        daemon.signal("HUP")


def test_start_callable_without_detaching_as_systemd_runs_it(
    daemon_runner: DaemonRunner,
) -> None:
    """``detach_process=False`` (the service-manager case): the forked process
    is the daemon itself, in the test's session, and ``notify=True`` waits for
    the READY=1 that ``daemonkit.ready()`` sends to ``$NOTIFY_SOCKET``."""

    def serve() -> None:
        daemonkit.ready("up")
        while True:
            time.sleep(0.05)

    daemon = daemon_runner.start_callable(serve, detach_process=False, wait_ready=True, notify=True)
    assert daemon.notify_messages() == ["READY=1", "STATUS=up"]
    assert daemon.launcher_exit_code is None
    assert parent(daemon.pid) == os.getpid()
    assert int(stat_fields(daemon.pid)[3]) == os.getsid(0)
    assert daemon.stop() == 0


def test_start_callable_reports_a_failure_before_ready(daemon_runner: DaemonRunner) -> None:
    """An exception before ``ready()`` fails the start with the daemon's own
    traceback (printed by the launcher), not a hang or a bare status; and the
    failed start leaves no process behind (the daemon, still printing its
    traceback when the launcher gave up, is waited for and reaped), so
    teardown has nothing to warn about."""

    def broken() -> None:
        raise ValueError("no configuration file")

    before = running_children()
    with pytest.raises(DaemonStartError) as failure:
        daemon_runner.start_callable(broken, wait_ready=True)
    assert failure.value.launcher_exit_code == 1
    assert "ValueError: no configuration file" in failure.value.launcher_stderr
    assert "no configuration file" in str(failure.value)
    assert running_children() == before
    assert daemon_runner.close() == ""


def test_start_callable_raises_configuration_errors_in_the_test(
    daemon_runner: DaemonRunner,
) -> None:
    """A bad DaemonContext option is raised in the test, before any fork."""
    with pytest.raises(daemonkit.SignalMapError):
        daemon_runner.start_callable(lambda: None, signal_map={"SIGNOPE": None})
    assert daemon_runner.daemons == []


def test_start_command_failures_are_explained(daemon_runner: DaemonRunner) -> None:
    """A program that exits at once fails ``daemonkit start`` (its launcher's
    message is in the error); one that dies after the exec grace period but
    before READY=1 is caught by the fixture's own wait, with its exit status
    and its log; one that never gets ready fails after ``timeout`` and is
    killed: no failed start leaves a process behind."""
    before = running_children()
    with pytest.raises(DaemonStartError, match="exited with status 3") as at_once:
        daemon_runner.start_command([sys.executable, "-c", "raise SystemExit(3)"])
    assert at_once.value.launcher_exit_code == 1

    late = "import sys, time; time.sleep(1); print('bad config', file=sys.stderr); sys.exit(2)"
    with pytest.raises(DaemonStartError, match="bad config") as dying:
        daemon_runner.start_command([sys.executable, "-c", late], notify=True)
    assert dying.value.exit_status == 2

    began = time.monotonic()
    with pytest.raises(DaemonStartError, match="READY=1") as silent:
        daemon_runner.start_command(["sleep", "30"], notify=True, timeout=1.0)
    assert time.monotonic() - began >= 1.0
    assert silent.value.exit_status == -signal.SIGKILL  # not left running
    assert running_children() == before


def test_stop_kills_a_daemon_that_ignores_sigterm(daemon_runner: DaemonRunner) -> None:
    """``stop()`` does not hang on a daemon that ignores SIGTERM: it kills it and
    raises TimeoutError, so the test sees the bug."""
    daemon = daemon_runner.start_command([sys.executable, "-c", IGNORES_TERM], notify=True)
    with pytest.raises(TimeoutError, match="did not exit within"):
        daemon.stop(timeout=0.5)
    assert daemon.exit_status == -signal.SIGKILL
    assert not is_alive(daemon.pid)


def test_respawn_supervisor_relays_the_programs_messages(
    daemon_runner: DaemonRunner, tmp_path: Path
) -> None:
    """With ``respawn=True`` the handle is the supervisor (its pidfile's holder),
    its program is its child, and the program's READY=1 is relayed to the
    handle's recorder, again after a restart; ``stop()`` ends both."""
    daemon = daemon_runner.start_command(
        [sys.executable, "-c", SERVICE, tmp_path / "marker"],
        notify=True,
        respawn=True,
        backoff=(0.1, 0.1),
    )
    assert _posix.process_name(daemon.pid) == _posix.SUPERVISOR_NAME
    assert "READY=1" in daemon.notify_messages()
    (program,) = daemon.children()
    before = len(daemon.notify_messages())
    pidfd = os.pidfd_open(program)
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    finally:
        os.close(pidfd)
    daemon.wait_for_message("READY=1", since=before)
    (restarted,) = daemon.children()
    assert restarted != program
    assert daemon.stop() == 0
    assert not is_alive(restarted)


def test_start_launcher_adopts_a_self_detaching_daemon(
    daemon_runner: DaemonRunner, tmp_path: Path
) -> None:
    """A program that detaches by itself is run to its end and the daemon it
    left is found without a pidfile: the test's new adopted child, whether a
    double fork left it (not a session leader) or a single fork and setsid
    (``setsid -f``: the leader of its session)."""
    told = tmp_path / "daemon.pid"
    daemon = daemon_runner.start_launcher([sys.executable, "-c", SELF_DETACHING, told])
    assert told.exists()
    assert daemon.pid == int(told.read_text())
    assert parent(daemon.pid) == os.getpid()
    assert daemon.stop() == 0

    leader = daemon_runner.start_launcher(["setsid", "-f", "sleep", "30"])
    assert int(stat_fields(leader.pid)[3]) == leader.pid
    assert _posix.process_name(leader.pid) == "sleep"
    assert leader.stop() == -signal.SIGTERM


def test_a_closed_runner_killed_its_daemons_and_gave_back_the_subreaper_duty(
    tmp_path: Path,
) -> None:
    """``DaemonRunner`` as a context manager: the test process is a subreaper
    only inside; at the end a daemon still running (and its own child) is
    killed and reaped: no process and no zombie is left."""
    assert not _posix.is_subreaper()
    with DaemonRunner(tmp_path) as runner:
        assert _posix.is_subreaper()
        forks = "import os, time\nif os.fork() == 0:\n    time.sleep(60)\ntime.sleep(60)\n"
        daemon = runner.start_command([sys.executable, "-c", forks])
        assert wait_until(lambda: len(daemon.children()) == 1)
        (child,) = daemon.children()
        child_started = start_time(child)
    assert not _posix.is_subreaper()
    assert daemon.exit_status == -signal.SIGKILL
    assert not is_alive(daemon.pid)
    assert start_time(child) != child_started  # gone (a zombie would keep its start time)
    assert daemon.pid not in _posix.children_of(os.getpid())


def test_fake_notify_socket_records_the_test_and_its_children(
    fake_notify_socket: NotifyRecorder,
) -> None:
    """``fake_notify_socket`` puts its address in ``$NOTIFY_SOCKET``: daemonkit's
    own calls in the test process and a program the test runs report to it,
    each line with its sender's pid; waiting for a line that never comes
    raises TimeoutError naming what did arrive."""
    assert os.environ["NOTIFY_SOCKET"] == fake_notify_socket.address
    daemonkit.notify.status("preparing")
    daemonkit.ready()
    child = subprocess.run(
        [sys.executable, "-c", "import daemonkit.notify as n, os; n.notify('X_CHILD=1')"],
        timeout=30,
        check=True,
    )
    assert child.returncode == 0
    assert fake_notify_socket.wait_for("X_CHILD=1") == "X_CHILD=1"
    assert fake_notify_socket.messages() == ["STATUS=preparing", "READY=1", "X_CHILD=1"]
    senders = fake_notify_socket.senders
    assert senders[:2] == [os.getpid(), os.getpid()]
    assert senders[2] not in (None, os.getpid())
    with pytest.raises(TimeoutError, match="X_CHILD=1"):
        fake_notify_socket.wait_for("STOPPING=1", timeout=0.2)


# -- whole test runs in a separate pytest process ------------------------------------------


def _leaked(recorded: dict[str, int], daemons: Daemons) -> list[int]:
    """The recorded processes (pid: start time) still alive; tracked for cleanup."""
    alive = [int(pid) for pid, started in recorded.items() if start_time(int(pid)) == started]
    for pid in alive:
        daemons.track(pid)
    return alive


FAILING_TEST = """\
import json, os, sys, time

IGNORES_TERM = {ignores_term!r}


def start_time(pid):
    with open(f"/proc/{{pid}}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[19])


def serve():
    while True:
        time.sleep(0.05)


def test_fails_with_daemons_running(daemon_runner):
    command = daemon_runner.start_command([sys.executable, "-c", IGNORES_TERM], notify=True)
    function = daemon_runner.start_callable(serve, signal_map={{"TERM": None}})
    with open({record!r}, "w") as out:
        json.dump({{str(d.pid): start_time(d.pid) for d in (command, function)}}, out)
    assert False, "this test fails on purpose"
"""


def test_daemons_are_killed_when_the_test_using_them_fails(
    pytester: pytest.Pytester, daemons: Daemons
) -> None:
    """The guarantee the plugin exists for: a test that fails with two daemons
    running (both ignore SIGTERM; one from a command, one from a function)
    leaves neither behind, and no warning, since the runner started both."""
    record = pytester.path / "pids.json"
    pytester.makepyfile(
        test_inner=FAILING_TEST.format(ignores_term=IGNORES_TERM, record=str(record))
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*this test fails on purpose*"])
    assert "DaemonLeftoverWarning" not in result.stdout.str()
    recorded = json.loads(record.read_text())
    assert len(recorded) == 2
    assert _leaked(recorded, daemons) == []


ORPHANING_TEST = """\
import json, os, subprocess, sys, time

# A classic double fork: the grandchild is orphaned, and adopted by the test.
ORPHAN = '''
import os, sys, time
if os.fork():
    sys.exit(0)
os.setsid()
if os.fork():
    os._exit(0)
with open(sys.argv[1] + ".tmp", "w") as out:
    out.write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(60)
'''


def start_time(pid):
    with open(f"/proc/{{pid}}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[19])


def test_leaves_an_orphan(daemon_runner, tmp_path):
    told = tmp_path / "orphan.pid"
    subprocess.run([sys.executable, "-c", ORPHAN, str(told)], check=True, timeout=30)
    while not told.exists():
        time.sleep(0.01)
    pid = int(told.read_text())
    with open({record!r}, "w") as out:
        json.dump({{str(pid): start_time(pid)}}, out)


def test_notify_socket_set(fake_notify_socket):
    assert os.environ["NOTIFY_SOCKET"] == fake_notify_socket.address


def test_notify_socket_restored():
    assert os.environ.get("NOTIFY_SOCKET") == {notify_socket!r}
"""


def test_an_orphan_the_test_left_is_killed_and_reported(
    pytester: pytest.Pytester, daemons: Daemons
) -> None:
    """A process the test did not start through the runner (a double-forked
    orphan of a plain subprocess) is adopted, killed at teardown and named in
    a DaemonLeftoverWarning; the test itself passes. ``fake_notify_socket``
    restores ``$NOTIFY_SOCKET`` for the tests after it."""
    record = pytester.path / "orphan.json"
    pytester.makepyfile(
        test_inner=ORPHANING_TEST.format(
            record=str(record), notify_socket=os.environ.get("NOTIFY_SOCKET")
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(passed=3)
    recorded = json.loads(record.read_text())
    (pid,) = recorded
    result.stdout.fnmatch_lines([f"*DaemonLeftoverWarning*pid {pid} *"])
    assert _leaked(recorded, daemons) == []
