"""examples/migration/: the same spool daemon before (python-daemon) and after (daemonkit).

Both programs run for real, side by side, on their own inbox and outbox:

- they do the same job: the same files come out, transformed the same way,
  with the same permissions (umask 027), the same log lines in the same
  order, SIGHUP re-reads the configuration, SIGTERM stops them cleanly
  and their pidfile is removed;
- the launcher is where they differ, as the migration promises: after.py's
  returns only once the daemon is ready (a slow start is waited for) and
  reports a failed start (exit 1, the daemon's traceback), while before.py's
  exits 0 at once in both cases; after a ``kill -9``, after.py starts again
  over the stale pidfile, before.py's new daemon dies on it in the
  background; a second start of after.py says "already running" at once;
- the ``Spooler`` class, the job itself, is identical in both files.

Every daemon is tracked for cleanup by the pid in its pidfile, or, for a
before.py daemon that never wrote one, by its exact command line (which
names this test's temporary directory), and killed by that pid.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import PROJECT_DIR, Daemons, clean_env, is_alive, read_text, wait_gone, wait_until
from test_cli import processes_running

pytestmark = pytest.mark.timeout(90)

pytest.importorskip("daemon", reason="python-daemon (the test extra) runs before.py")

MIGRATION = PROJECT_DIR / "examples" / "migration"
BEFORE = MIGRATION / "before.py"
AFTER = MIGRATION / "after.py"
LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d spoold\[(\d+)\]: (.*)")


@dataclass
class Spool:
    """One program's files and how to start it."""

    program: Path
    root: Path
    daemons: Daemons

    def __post_init__(self) -> None:
        for folder in ("in", "out", "staging"):
            (self.root / folder).mkdir(parents=True)
        self.config.write_text(json.dumps({"transform": "upper", "interval": 0.02}))

    @property
    def inbox(self) -> Path:
        return self.root / "in"

    @property
    def outbox(self) -> Path:
        return self.root / "out"

    @property
    def config(self) -> Path:
        return self.root / "spoold.json"

    @property
    def pidfile(self) -> Path:
        return self.root / "spoold.pid"

    @property
    def log(self) -> Path:
        return self.root / "spoold.log"

    def command(self, *extra: str, inbox: Path | None = None) -> list[str]:
        return [
            sys.executable,
            str(self.program),
            "--inbox",
            str(inbox or self.inbox),
            "--outbox",
            str(self.outbox),
            "--config",
            str(self.config),
            "--pidfile",
            str(self.pidfile),
            "--log",
            str(self.log),
            *extra,
        ]

    def launch(self, *extra: str, inbox: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run the launcher to its end (the daemons it leaves are tracked)."""
        command = self.command(*extra, inbox=inbox)
        try:
            return subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=30,
                stdin=subprocess.DEVNULL,
                env=clean_env(),
                cwd=self.root,
            )
        finally:
            self.track(command)

    def track(self, command: list[str]) -> None:
        """Track every daemon this command left: by pidfile and by exact command line."""
        for pid in processes_running(command):
            self.daemons.track(pid)
        pid = self.pid()
        if pid is not None:
            self.daemons.track(pid)

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text())
        except (OSError, ValueError):
            return None

    def running_pid(self) -> int:
        assert wait_until(lambda: self.pid() is not None and is_alive(self.pid() or 0), 10)
        pid = self.pid()
        assert pid is not None
        self.daemons.track(pid)
        return pid

    def drop(self, name: str, text: str) -> None:
        """Put a file into the inbox whole (written aside, then renamed in)."""
        staged = self.root / "staging" / name
        staged.write_text(text)
        os.rename(staged, self.inbox / name)

    def messages(self) -> list[str]:
        """The log's messages, without time stamps and pids."""
        found = []
        for line in read_text(self.log).splitlines():
            match = LINE.fullmatch(line)
            if match:
                found.append(match.group(2))
        return found

    def wait_for(self, message: str, count: int = 1, timeout: float = 15.0) -> None:
        ok = wait_until(lambda: self.messages().count(message) >= count, timeout)
        assert ok, f"{self.program.name}: no {message!r} in {read_text(self.log)!r}"


@pytest.fixture
def before(daemons: Daemons, tmp_path: Path) -> Spool:
    return Spool(BEFORE, tmp_path / "before", daemons)


@pytest.fixture
def after(daemons: Daemons, tmp_path: Path) -> Spool:
    return Spool(AFTER, tmp_path / "after", daemons)


def test_both_do_the_same_job(before: Spool, after: Spool) -> None:
    """Same files in, same files out (content and mode 0640 from umask 027),
    SIGHUP re-reads the configuration, SIGTERM stops the daemon after the
    file in hand, the pidfile goes, and the logs say the same, line for line."""
    for spool in (before, after):
        result = spool.launch()
        assert result.returncode == 0, result.stderr
        pid = spool.running_pid()
        spool.wait_for("started")
        spool.drop("a.txt", "Hello\n")
        spool.drop("b.txt", "World\n")
        spool.wait_for("processed b.txt")
        spool.config.write_text(json.dumps({"transform": "lower", "interval": 0.02}))
        os.kill(pid, signal.SIGHUP)
        spool.wait_for("configuration reloaded: transform=lower")
        spool.drop("c.txt", "Quiet Please\n")
        spool.wait_for("processed c.txt")
        os.kill(pid, signal.SIGTERM)
        assert wait_gone(pid, 15), f"{spool.program.name} did not stop on SIGTERM"
        assert not spool.pidfile.exists(), f"{spool.program.name} left its pidfile"

    for spool in (before, after):
        outputs = {path.name: path.read_text() for path in spool.outbox.iterdir()}
        assert outputs == {"a.txt": "HELLO\n", "b.txt": "WORLD\n", "c.txt": "quiet please\n"}
        modes = {oct(path.stat().st_mode & 0o777) for path in spool.outbox.iterdir()}
        assert modes == {"0o640"}
        assert list(spool.inbox.iterdir()) == []
    assert (
        before.messages()
        == after.messages()
        == [
            "started",
            "processed a.txt",
            "processed b.txt",
            "configuration reloaded: transform=lower",
            "processed c.txt",
            "stop requested",
            "stopped",
        ]
    )


def test_only_after_waits_for_a_slow_start(before: Spool, after: Spool) -> None:
    """With a 1.5 s start (--delay), after.py's launcher returns once the daemon
    is ready (it has logged "started"); before.py's returns at once, while the
    daemon is still starting (nothing logged yet), so whoever started it
    cannot know when it works."""
    result = before.launch("--delay", "1.5")
    assert result.returncode == 0
    assert "started" not in before.messages()  # returned long before the 1.5 s were up
    before.running_pid()
    before.wait_for("started")

    result = after.launch("--delay", "1.5")
    assert result.returncode == 0, result.stderr
    assert "started" in after.messages()  # ready() came after it: the launcher waited
    for spool in (before, after):
        pid = spool.running_pid()
        os.kill(pid, signal.SIGTERM)
        assert wait_gone(pid, 15)


def test_only_after_reports_a_failed_start(before: Spool, after: Spool) -> None:
    """The inbox does not exist: after.py's launcher exits 1 and prints the
    daemon's own error; before.py's exits 0, and the error appears later, in
    the log only, with no daemon left running."""
    missing = before.root / "no-such-inbox"
    result = before.launch(inbox=missing)
    assert result.returncode == 0 and result.stderr == ""
    before.track(before.command(inbox=missing))
    assert wait_until(lambda: "does not exist" in read_text(before.log), 15)
    assert wait_until(lambda: processes_running(before.command(inbox=missing)) == [], 15)

    missing = after.root / "no-such-inbox"
    result = after.launch(inbox=missing)
    assert result.returncode == 1
    assert "FileNotFoundError" in result.stderr and f"{missing} does not exist" in result.stderr
    assert not after.pidfile.exists()
    assert processes_running(after.command(inbox=missing)) == []


def test_a_stale_pidfile_stops_before_but_not_after(before: Spool, after: Spool) -> None:
    """After kill -9 the pidfile stays behind. A new before.py "starts" (exit 0),
    but its daemon waits for the pidfile's lock and dies in the background
    (LockTimeout in the log): nothing runs. A new after.py sees that the stale
    pidfile is not locked, takes it over, and runs."""
    for spool in (before, after):
        assert spool.launch().returncode == 0
        pid = spool.running_pid()
        spool.wait_for("started")
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid, 10)
        assert spool.pidfile.exists() and spool.pid() == pid

    result = before.launch()
    assert result.returncode == 0  # it says nothing of what is coming
    assert wait_until(lambda: "LockTimeout" in read_text(before.log), 20), read_text(before.log)
    assert wait_until(lambda: processes_running(before.command()) == [], 15)
    assert before.messages().count("started") == 1

    result = after.launch()
    assert result.returncode == 0, result.stderr
    pid = after.running_pid()
    assert after.messages().count("started") == 2
    again = after.launch()
    assert again.returncode == 0 and f"already running as pid {pid}" in again.stderr
    os.kill(pid, signal.SIGTERM)
    assert wait_gone(pid, 15)


def test_the_job_itself_did_not_change() -> None:
    """The Spooler class and the log helper are the same code in both files:
    the migration touched only how the program becomes a daemon."""

    def definitions(path: Path) -> dict[str, str]:
        tree = ast.parse(path.read_text())
        return {
            node.name: ast.dump(node)
            for node in tree.body
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name in ("Spooler", "log")
        }

    def imports(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        nodes = [node for node in tree.body if isinstance(node, ast.Import)]
        return {alias.name for node in nodes for alias in node.names}

    assert definitions(BEFORE) == definitions(AFTER)
    assert set(definitions(AFTER)) == {"Spooler", "log"}
    assert {"daemon", "daemon.pidfile"} <= imports(BEFORE)
    assert "daemonkit" in imports(AFTER)
    assert not {name for name in imports(AFTER) if name.split(".")[0] == "daemon"}
