"""The launcher <-> daemon handshake: the launcher's exit status tells the truth.

The launcher exits 0 only once the daemon is ready; if the daemon fails,
dies or times out first, the launcher prints why and exits 1, promptly.

Daemon scripts wait in 0.05 s sleeps, never one long ``time.sleep(30)``:
CPython runs a Python signal handler between bytecodes, so a SIGTERM that
lands just before a long sleep starts is only handled when the sleep ends.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from conftest import Daemons, is_alive, stop, wait_gone

# A foreign, lockfile-style pidfile object whose __enter__ fails.
FAILING_PIDFILE = """\
class FailingPidfile:
    def __enter__(self):
        raise RuntimeError("boom: the pidfile cannot be taken")

    def __exit__(self, *exc_info):
        return None
"""


def daemon_pid_from(stderr: str) -> int:
    """The daemon's pid as the launcher named it ("the daemon (pid N) ...")."""
    match = re.search(r"\(pid (\d+)\)", stderr)
    assert match, f"no pid in the launcher's message: {stderr!r}"
    return int(match.group(1))


def test_failing_setup_step_reports_the_daemons_traceback(daemons: Daemons) -> None:
    launch, report = daemons.launch(
        FAILING_PIDFILE
        + """
with daemonkit.DaemonContext(pidfile=FailingPidfile()):
    facts.report(REPORT)  # never reached
    for _ in range(600): time.sleep(0.05)
"""
    )
    assert launch.returncode == 1
    assert launch.elapsed < 10
    assert "Traceback (most recent call last)" in launch.stderr
    assert "RuntimeError: boom: the pidfile cannot be taken" in launch.stderr
    assert "__enter__" in launch.stderr  # the daemon's own frames
    assert "failed before it was ready" in launch.stderr
    assert launch.stdout == ""
    pid = daemon_pid_from(launch.stderr)
    daemons.track(pid)
    assert pid != 0
    assert wait_gone(pid, 5.0)
    assert not report.exists()


def test_exception_in_body_before_ready(daemons: Daemons) -> None:
    launch, report = daemons.launch(
        """
def start_service():
    raise ValueError("cannot bind port 99999")


with daemonkit.DaemonContext(wait_ready=True):
    start_service()
    daemonkit.ready()
    facts.report(REPORT)
    for _ in range(600): time.sleep(0.05)
"""
    )
    assert launch.returncode == 1
    assert launch.elapsed < 10
    assert "Traceback (most recent call last)" in launch.stderr
    assert "ValueError: cannot bind port 99999" in launch.stderr
    assert "start_service" in launch.stderr
    pid = daemon_pid_from(launch.stderr)
    daemons.track(pid)
    assert wait_gone(pid, 5.0)
    assert not report.exists()


def test_launcher_waits_for_ready(daemons: Daemons) -> None:
    launch, report = daemons.launch(
        """
with daemonkit.DaemonContext(wait_ready=True):
    time.sleep(0.5)
    facts.report(REPORT, before_ready=time.monotonic())
    daemonkit.ready()
    for _ in range(600): time.sleep(0.05)
"""
    )
    exited = time.monotonic()
    assert launch.returncode == 0, launch.stderr
    assert launch.elapsed >= 0.5
    assert launch.elapsed < 10
    data = daemons.read_report(report)
    # The launcher was still there when the daemon was about to call ready().
    assert exited >= data["before_ready"]
    assert is_alive(data["pid"])
    assert stop(data["pid"])


def test_ready_with_status_exits_zero(daemons: Daemons) -> None:
    launch, report = daemons.launch(
        """
with daemonkit.DaemonContext(wait_ready=True):
    facts.report(REPORT)
    daemonkit.ready("listening on port 8080")
    daemonkit.ready()  # a second call is harmless
    for _ in range(600): time.sleep(0.05)
"""
    )
    assert launch.returncode == 0, launch.stderr
    data = daemons.read_report(report)
    assert stop(data["pid"])


def test_default_readiness_is_entering_the_body(daemons: Daemons) -> None:
    """Without wait_ready the launcher exits 0 once the body is entered,
    even though the body never calls ready()."""
    launch, report = daemons.launch(
        """
with daemonkit.DaemonContext():
    facts.report(REPORT)
    for _ in range(600): time.sleep(0.05)
"""
    )
    assert launch.returncode == 0, launch.stderr
    assert launch.elapsed < 10
    data = daemons.read_report(report)
    assert is_alive(data["pid"])
    assert stop(data["pid"])


@pytest.mark.parametrize("death", ["os_exit", "sigkill"])
def test_daemon_dying_before_ready(daemons: Daemons, death: str) -> None:
    how = "os._exit(3)" if death == "os_exit" else "os.kill(os.getpid(), signal.SIGKILL)"
    launch, report = daemons.launch(
        f"""
with daemonkit.DaemonContext(wait_ready=True):
    facts.report(REPORT)
    {how}
    daemonkit.ready()
    for _ in range(600): time.sleep(0.05)
"""
    )
    assert launch.returncode == 1
    assert launch.elapsed < 10
    how = "exited with status 3" if death == "os_exit" else "was killed by signal SIGKILL"
    assert f"{how} before it was ready" in launch.stderr
    data = daemons.read_report(report)
    assert daemon_pid_from(launch.stderr) == data["pid"]
    assert wait_gone(data["pid"], 5.0)


def test_ready_timeout_stops_the_daemon(daemons: Daemons) -> None:
    launch, report = daemons.launch(
        """
with daemonkit.DaemonContext(wait_ready=True, ready_timeout=1):
    facts.report(REPORT)
    for _ in range(600): time.sleep(0.05)  # never ready
"""
    )
    assert launch.returncode == 1
    assert 1 <= launch.elapsed < 10
    assert "not ready within 1 s" in launch.stderr
    assert "ready_timeout" in launch.stderr
    data = daemons.read_report(report)
    assert daemon_pid_from(launch.stderr) == data["pid"]
    # The launcher stopped the daemon before it exited.
    assert not is_alive(data["pid"])


def test_ready_timeout_kills_a_daemon_that_ignores_sigterm(daemons: Daemons) -> None:
    launch, report = daemons.launch(
        """
with daemonkit.DaemonContext(
    wait_ready=True, ready_timeout=1, signal_map={signal.SIGTERM: None}
):
    facts.report(REPORT)
    for _ in range(600): time.sleep(0.05)  # never ready
"""
    )
    assert launch.returncode == 1
    assert 1 <= launch.elapsed < 15
    assert "not ready within 1 s" in launch.stderr
    data = daemons.read_report(report)
    assert data["signals"]["SIGTERM"] == "ignore"
    assert not is_alive(data["pid"])


def test_ready_outside_a_daemon_is_a_noop() -> None:
    import daemonkit

    pid, fds = os.getpid(), sorted(os.listdir("/proc/self/fd"))
    daemonkit.ready()
    daemonkit.ready("some status")
    assert os.getpid() == pid
    assert sorted(os.listdir("/proc/self/fd")) == fds


def test_ready_outside_a_daemon_in_a_fresh_process() -> None:
    env = {key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import daemonkit, os; daemonkit.ready(); daemonkit.ready('x'); print(os.getpid())",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.strip().isdigit()


def test_ready_in_a_context_that_does_not_detach(daemons: Daemons) -> None:
    launch, report = daemons.launch(
        """
with daemonkit.DaemonContext(detach_process=False, wait_ready=True):
    daemonkit.ready()
    facts.report(REPORT)
"""
    )
    assert launch.returncode == 0, launch.stderr
    data = daemons.read_report(report)
    assert data["ppid"] == os.getpid()  # the launcher itself: it did not fork
    assert launch.stderr == ""


def test_child_forked_before_ready_does_not_hold_the_launcher(daemons: Daemons) -> None:
    launch, report = daemons.launch(
        """
with daemonkit.DaemonContext(wait_ready=True):
    child = os.fork()
    if child == 0:
        for _ in range(600): time.sleep(0.05)
        os._exit(0)
    facts.report(REPORT, child=child)
    daemonkit.ready()
    for _ in range(600): time.sleep(0.05)
""",
        timeout=25,
    )
    assert launch.returncode == 0, launch.stderr
    assert launch.elapsed < 10  # not the child's 30 s
    data = daemons.read_report(report)
    daemons.track(data["child"])
    assert is_alive(data["child"])
    assert stop(data["child"])
    assert stop(data["pid"])


def test_child_forked_before_ready_cannot_speak_for_the_daemon(daemons: Daemons) -> None:
    """ready() in a child of the daemon does not release the launcher."""
    launch, report = daemons.launch(
        """
with daemonkit.DaemonContext(wait_ready=True):
    child = os.fork()
    if child == 0:
        daemonkit.ready()
        os._exit(0)
    os.waitpid(child, 0)
    time.sleep(0.3)
    facts.report(REPORT, before_ready=time.monotonic())
    daemonkit.ready()
    for _ in range(600): time.sleep(0.05)
""",
    )
    exited = time.monotonic()
    assert launch.returncode == 0, launch.stderr
    data = daemons.read_report(report)
    assert exited >= data["before_ready"]
    assert stop(data["pid"])


def test_child_forked_before_ready_dying_does_not_fail_the_start(daemons: Daemons) -> None:
    launch, report = daemons.launch(
        """
with daemonkit.DaemonContext(wait_ready=True):
    child = os.fork()
    if child == 0:
        os._exit(7)
    os.waitpid(child, 0)
    facts.report(REPORT)
    daemonkit.ready()
    for _ in range(600): time.sleep(0.05)
"""
    )
    assert launch.returncode == 0, launch.stderr
    data = daemons.read_report(report)
    assert stop(data["pid"])


@pytest.mark.parametrize("spawn", ["fork", "subprocess"])
def test_child_forked_before_ready_does_not_hide_the_daemons_death(
    daemons: Daemons, spawn: str
) -> None:
    """The daemon dies before ready while its child lives on: the launcher
    still learns of it at once (the child holds no copy of the channel)."""
    start = {
        "fork": "child = os.fork()\n"
        "    if child == 0:\n"
        "        for _ in range(600): time.sleep(0.05)\n"
        "        os._exit(0)",
        "subprocess": "import subprocess\n    child = subprocess.Popen(['sleep', '30']).pid",
    }[spawn]
    launch, report = daemons.launch(
        f"""
with daemonkit.DaemonContext(wait_ready=True):
    {start}
    facts.report(REPORT, child=child)
    os._exit(3)
""",
        timeout=25,
    )
    assert launch.returncode == 1
    assert launch.elapsed < 10  # neither the child's 30 s nor the 90 s timeout
    assert "exited with status 3 before it was ready" in launch.stderr
    data = daemons.read_report(report)
    daemons.track(data["child"])
    assert is_alive(data["child"])
    assert stop(data["child"])


def test_leaving_the_context_without_ready_fails_at_once(daemons: Daemons) -> None:
    """wait_ready=True and a body that ends without ready(): reported, not a timeout."""
    launch, report = daemons.launch(
        """
with daemonkit.DaemonContext(wait_ready=True):
    facts.report(REPORT)
for _ in range(600): time.sleep(0.05)  # still running, outside the context
"""
    )
    assert launch.returncode == 1
    assert launch.elapsed < 10  # not the 90 s ready timeout
    assert "left its DaemonContext without calling ready()" in launch.stderr
    data = daemons.read_report(report)
    assert stop(data["pid"])
