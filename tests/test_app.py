"""The Daemon app runner gives a Python program start/stop/status/... for free."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Daemons, is_alive, wait_gone

APP = """
import sys, time
import daemonkit

app = daemonkit.Daemon("beat", pidfile=sys.argv[1], stdout=sys.argv[2],
                       working_directory="/")

@app.main
def serve():
    print("started", flush=True)
    while True:
        time.sleep(0.05)

@app.on_reload
def reload():
    print("reloaded", flush=True)

if __name__ == "__main__":
    app.cli(sys.argv[3:])
"""


class App:
    def __init__(self, daemons: Daemons, tmp_path: Path) -> None:
        self.daemons = daemons
        self.script = tmp_path / "beat.py"
        self.script.write_text(APP)
        self.pidfile = tmp_path / "beat.pid"
        self.log = tmp_path / "beat.log"

    def __call__(self, *argv: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(self.script), str(self.pidfile), str(self.log), *argv]
        launch = self.daemons.run(command)
        if self.pidfile.exists() and self.pidfile.read_text().strip().isdigit():
            self.daemons.track(int(self.pidfile.read_text()))
        return subprocess.CompletedProcess(command, launch.returncode, launch.stdout, launch.stderr)

    def pid(self) -> int:
        return int(self.pidfile.read_text())

    def wait_log(self, text: str, count: int = 1) -> None:
        deadline = time.monotonic() + 10
        while not self.log.exists() or self.log.read_text().count(text) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"{text!r} x{count} not in the log: {self.log.read_text()!r}")
            time.sleep(0.02)


@pytest.fixture
def app(daemons: Daemons, tmp_path: Path) -> App:
    return App(daemons, tmp_path)


def test_start_status_reload_restart_stop(app: App) -> None:
    assert app("start").returncode == 0
    first = app.pid()
    assert is_alive(first)
    app.wait_log("started")

    status = app("status")
    assert status.returncode == 0 and f"running (pid {first}" in status.stdout

    again = app("start")
    assert again.returncode == 0 and "already running" in again.stderr
    assert app.pid() == first

    assert app("reload").returncode == 0
    app.wait_log("reloaded")

    assert app("restart").returncode == 0
    second = app.pid()
    assert second != first and wait_gone(first, 5) and is_alive(second)
    app.wait_log("started", count=2)

    stop = app("stop")
    assert stop.returncode == 0 and "stopped" in stop.stderr
    assert wait_gone(second, 5)
    assert not app.pidfile.exists()
    status = app("status")
    assert status.returncode == 3 and "not running" in status.stdout
    assert app("stop").returncode == 0  # stopping a stopped service succeeds (LSB)
    assert app("reload").returncode == 7


def test_run_stays_in_the_foreground(app: App, daemons: Daemons) -> None:
    command = [sys.executable, str(app.script), str(app.pidfile), str(app.log), "run"]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    daemons.track(proc.pid)
    app.wait_log("started")
    assert app.pid() == proc.pid  # no fork: the pidfile names the process we started
    assert app("stop").returncode == 0
    assert proc.wait(10) == 0  # SIGTERM: a clean exit


def test_status_json_and_help(app: App) -> None:
    status = app("status", "--json")
    assert status.returncode == 3
    assert '"state": "absent"' in status.stdout
    help_text = app("--help")
    assert help_text.returncode == 0
    for word in ("start", "stop", "restart", "status", "reload", "run", "exit codes"):
        assert word in help_text.stdout


def test_a_program_without_main_is_a_clear_error(daemons: Daemons, tmp_path: Path) -> None:
    script = tmp_path / "empty.py"
    script.write_text(
        "import sys, daemonkit\n"
        f"daemonkit.Daemon('empty', pidfile={str(tmp_path / 'e.pid')!r}).cli(['start'])\n"
    )
    launch = daemons.run([sys.executable, str(script)])
    assert launch.returncode == 6
    assert "no @main function" in launch.stderr


FOREGROUND_APP = """
import sys
import daemonkit

app = daemonkit.Daemon("fg", pidfile=sys.argv[1])

@app.main
def serve():
    print("to stdout", flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    sys.exit(3)

app.cli(sys.argv[2:])
"""


@pytest.mark.timeout(30)
@pytest.mark.parametrize("argv", [["run"], ["run", "--respawn", "--max-restarts", "0"]])
def test_run_in_the_foreground_keeps_the_callers_output(tmp_path: Path, argv: list[str]) -> None:
    """``app.py run`` (as ``daemonkit run`` does) leaves stdout/stderr where the
    caller sees them when the app gives none: a container's log, a terminal.
    Supervised, the supervisor's own words ("giving up") show there too."""
    script = tmp_path / "fg.py"
    script.write_text(FOREGROUND_APP)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "fg.pid"), *argv],
        capture_output=True,
        text=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
    )
    assert "to stdout" in done.stdout
    assert "to stderr" in done.stderr
    if "--respawn" in argv:
        assert "giving up" in done.stderr
        assert done.returncode == 3
    assert not (tmp_path / "fg.pid").exists()
