"""``daemonkit reload --notify`` waits for the daemon's RELOADING=1, then READY=1."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import Daemons, wait_gone

PROGRAM = """
import signal, sys, time
import daemonkit.notify as notify

def on_hup(signum, frame):
    notify.reloading()
    time.sleep(float(sys.argv[1]))  # re-reading the configuration
    notify.notify("READY=1", STATUS="reloaded")

signal.signal(signal.SIGHUP, on_hup)
notify.notify("READY=1")
while True:
    time.sleep(0.05)
"""


def daemonkit(*argv: str) -> list[str]:
    return [sys.executable, "-m", "daemonkit", *argv]


def test_reload_notify_waits_for_reloading_then_ready(daemons: Daemons, tmp_path: Path) -> None:
    pidfile = str(tmp_path / "r.pid")
    script = tmp_path / "reloader.py"
    script.write_text(PROGRAM)
    start = daemons.run(
        daemonkit(
            "start", "--notify", "--pidfile", pidfile, "--", sys.executable, str(script), "0.5"
        )
    )
    assert start.returncode == 0, start.stderr
    pid = int(Path(pidfile).read_text())
    daemons.track(pid)

    reload = daemons.run(daemonkit("reload", "--notify", "--pidfile", pidfile))
    assert reload.returncode == 0, reload.stderr
    assert "RELOADING=1, then READY=1" in reload.stdout
    assert reload.elapsed >= 0.5  # it waited for the reload to finish

    quick = daemons.run(daemonkit("reload", "--pidfile", pidfile))  # without --notify
    assert quick.returncode == 0 and quick.elapsed < 0.5 + 5

    stop = daemons.run(daemonkit("stop", "--pidfile", pidfile))
    assert stop.returncode == 0
    assert wait_gone(pid, 5)


def test_reload_notify_of_a_daemon_that_never_confirms(daemons: Daemons, tmp_path: Path) -> None:
    pidfile = str(tmp_path / "s.pid")
    start = daemons.run(daemonkit("start", "--pidfile", pidfile, "--", "sleep", "30"))
    assert start.returncode == 0, start.stderr
    pid = int(Path(pidfile).read_text())
    daemons.track(pid)
    reload = daemons.run(
        daemonkit(
            "reload", "--notify", "--timeout", "0.5", "--signal", "USR1", "--pidfile", pidfile
        )
    )
    # sleep dies of SIGUSR1 (default action): reported, not waited on for 90 s.
    assert reload.returncode == 1
    assert "exited while reloading" in reload.stderr
    assert reload.elapsed < 10


def test_a_daemoncontext_program_under_start_is_already_the_daemon(
    daemons: Daemons, tmp_path: Path
) -> None:
    """A program using DaemonContext, started by `daemonkit start`, does not detach
    again and keeps the pidfile lock; a child merely inheriting the variable would."""
    program = tmp_path / "ctx.py"
    report = tmp_path / "ctx.json"
    program.write_text(
        "import json, os, sys, time, daemonkit\n"
        "from daemonkit import _posix\n"
        "with daemonkit.DaemonContext(wait_ready=True):\n"
        "    child = os.fork()\n"
        "    if child == 0:\n"
        "        json.dump({'child': _posix.detach_decision()[0]},\n"
        "                  open(sys.argv[1] + '.child', 'w'))\n"
        "        os._exit(0)\n"
        "    os.waitpid(child, 0)\n"
        "    json.dump({'pid': os.getpid()}, open(sys.argv[1], 'w'))\n"
        "    daemonkit.ready()\n"
        "    while True:\n"
        "        time.sleep(0.05)\n"
    )
    pidfile = str(tmp_path / "ctx.pid")
    start = daemons.run(
        daemonkit(
            "start",
            "--notify",
            "--pidfile",
            pidfile,
            "--",
            sys.executable,
            str(program),
            str(report),
        )
    )
    assert start.returncode == 0, start.stderr
    pid = int(Path(pidfile).read_text())
    daemons.track(pid)
    import json

    assert json.loads(report.read_text())["pid"] == pid  # no second detach
    assert json.loads(Path(f"{report}.child").read_text())["child"] is True
    status = daemons.run(daemonkit("status", "--pidfile", pidfile))
    assert status.returncode == 0, status.stdout  # the lock survived its DaemonContext
    assert daemons.run(daemonkit("stop", "--pidfile", pidfile)).returncode == 0
    assert wait_gone(pid, 5)
