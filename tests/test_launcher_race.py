"""The launcher's judgement does not depend on which process the scheduler runs first.

After the second fork, the daemon may exec (closing the channel) before the
intermediate process has written the daemon's pid on its report pipe. The
launcher must then wait for that pid, not for the intermediate process to
exit: that process only leaves once the launcher has. (Seen in CI as a
``daemonkit start`` that never returned.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from conftest import Daemons

from daemonkit import readiness
from daemonkit.errors import StartupError

# Stands in for the intermediate process: it forks the daemon (which execs
# argv at once), prints its pid for the test's cleanup, tells it on the
# report pipe only 0.5 s later, then stays until the launcher's hold pipe
# reaches end of file or the daemon dies, whose wait status it reports.
LATE_MIDDLE = """
import os, select, sys, time
report, hold, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
daemon = os.fork()
if daemon == 0:
    os.execvp(argv[0], argv)
print(daemon, flush=True)
time.sleep(0.5)
os.write(report, b"%d\\n" % daemon)
poller = select.poll()
poller.register(hold, select.POLLIN)
pidfd = os.pidfd_open(daemon)
poller.register(pidfd, select.POLLIN)
if any(fd == pidfd for fd, _ in poller.poll()):
    os.write(report, b"%d\\n" % os.waitpid(daemon, 0)[1])
"""


def judge_with_late_pid(daemons: Daemons, daemon_argv: list[str]) -> tuple[object, int]:
    """Run wait_until_ready on a closed channel and a middle that tells the pid late.

    Returns what wait_until_ready returned (or raised) and the daemon's pid.
    """
    channel_read, channel_write = os.pipe()
    os.close(channel_write)  # the daemon exec'd: its channel is closed
    report_read, report_write = os.pipe()
    hold_read, hold_write = os.pipe()
    middle = subprocess.Popen(
        [sys.executable, "-c", LATE_MIDDLE, str(report_write), str(hold_read), *daemon_argv],
        pass_fds=(report_write, hold_read),
        stdout=subprocess.PIPE,
    )
    daemons.track(middle.pid)
    assert middle.stdout is not None
    daemon = int(middle.stdout.readline())
    daemons.track(daemon)
    os.close(report_write)
    os.close(hold_read)
    result: list[object] = []

    def judge() -> None:
        try:
            result.append(
                readiness.wait_until_ready(
                    readiness.PipeReceiver(channel_read),
                    middle.pid,
                    readiness.MiddleReport(report_read),
                    10,
                    exec_is_ready=True,
                )
            )
        except StartupError as exc:
            result.append(exc)

    judging = threading.Thread(target=judge, daemon=True)
    judging.start()
    judging.join(8)
    finished = not judging.is_alive()
    os.close(hold_write)  # the launcher leaves: the middle goes too
    judging.join(8)
    middle.wait(8)
    middle.stdout.close()
    for fd in (channel_read, report_read):
        os.close(fd)
    assert finished, "the launcher waited for the intermediate process instead of the pid"
    return result[0], daemon


def test_exec_before_the_pid_is_told_counts_as_ready(daemons: Daemons) -> None:
    outcome, pid = judge_with_late_pid(daemons, ["sleep", "30"])
    assert isinstance(outcome, readiness.Outcome), outcome
    assert outcome.pid == pid


def test_death_before_the_pid_is_told_is_reported(daemons: Daemons) -> None:
    outcome, pid = judge_with_late_pid(daemons, ["true"])
    assert isinstance(outcome, StartupError), outcome
    assert f"pid {pid}" in str(outcome)
