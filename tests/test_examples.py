"""The examples are real programs: run them as a user would and check the results.

Every process is cleaned up by the pid it wrote into its pidfile (or reported
on the launcher's stderr), through the ``daemons`` tracker, never by name.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    PROJECT_DIR,
    Daemons,
    free_port,
    is_alive,
    parent_of,
    read_line,
    stop,
    wait_gone,
)

EXAMPLES = PROJECT_DIR / "examples"
ECHO_SERVER = EXAMPLES / "echo_server.py"
RUN_EXAMPLE = EXAMPLES / "run_example.sh"
WALKTHROUGH = EXAMPLES / "walkthrough.sh"


def echo(port: int, line: bytes) -> bytes:
    """Send ``line`` to the echo server on ``port`` (one attempt) and return the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(line)
        return read_line(sock)


def track_pidfiles(daemons: Daemons, folder: Path) -> None:
    """Track every echo server named by a pidfile under ``folder``, for cleanup."""
    for path in folder.rglob("*.pid"):
        try:
            pid = int(path.read_text())
        except (OSError, ValueError):
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if str(ECHO_SERVER).encode() not in cmdline.read():
                    continue
        except OSError:
            continue
        daemons.track(pid)


@pytest.fixture
def echo_daemons(daemons: Daemons, tmp_path: Path) -> Iterator[Daemons]:
    """``daemons``, plus every echo server whose pidfile is left under tmp_path."""
    try:
        yield daemons
    finally:
        track_pidfiles(daemons, tmp_path)


def start_echo_server(
    tmp_path: Path, port: int, *extra: str
) -> tuple[subprocess.CompletedProcess[str], int, Path, Path]:
    """Run the example's launcher; return how it ended, its pid, pidfile and log."""
    pidfile = tmp_path / "echo.pid"
    log = tmp_path / "echo.log"
    command = [
        sys.executable,
        str(ECHO_SERVER),
        "--port",
        str(port),
        "--pidfile",
        str(pidfile),
        "--log",
        str(log),
        *extra,
    ]
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the launcher did not exit within 30 s; stderr: {err}")
    result = subprocess.CompletedProcess(command, proc.returncode, out, err)
    return result, proc.pid, pidfile, log


def run_script(script: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run an example script with this interpreter, its work directory under tmp_path."""
    env = dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp_path))
    try:
        return subprocess.run(
            ["bash", str(script)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=45,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{script.name} did not finish within 45 s; output: {exc.stdout!r}")


def test_run_example_script(echo_daemons: Daemons, tmp_path: Path) -> None:
    result = run_script(RUN_EXAMPLE, tmp_path)
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    assert "OK: every check passed" in output
    assert "FAILED" not in output
    assert "echo:     hello from run_example.sh" in output
    assert "tty_nr is 0: no controlling terminal" in output
    assert "Address already in use" in output
    match = re.search(r"pidfile: .* -> pid (\d+)", output)
    assert match, output
    daemon_pid = int(match.group(1))
    assert not is_alive(daemon_pid), "run_example.sh left its daemon running"
    assert not list(tmp_path.iterdir()), "run_example.sh left its work directory"


def test_walkthrough_script(daemons: Daemons, tmp_path: Path) -> None:
    result = run_script(WALKTHROUGH, tmp_path)
    output = result.stdout
    match = re.search(r"pidfile: .* -> pid (\d+)", output)
    if match:
        daemons.track(int(match.group(1)))
    assert result.returncode == 0, output + result.stderr
    assert "OK: every check passed" in output
    assert "FAILED" not in output + result.stderr
    assert "$ daemonkit start --pidfile $DIR/echo.pid --notify" in output
    assert "exit status 0 after " in output
    assert match, output
    pid = match.group(1)
    assert f"| running (pid {pid}, up " in output
    assert '"state": "running"' in output
    assert "| hello from walkthrough.sh" in output
    assert f"| daemonkit: stopped (pid {pid}, " in output
    assert "| not running\n   ok: exit status 3" in output
    assert not is_alive(int(pid)), "walkthrough.sh left its daemon running"
    assert not list(tmp_path.iterdir()), "walkthrough.sh left its work directory"


def test_echo_server_starts_echoes_and_stops(echo_daemons: Daemons, tmp_path: Path) -> None:
    port = free_port()
    launch, launcher_pid, pidfile, log = start_echo_server(tmp_path, port, "--delay", "0.2")
    assert launch.returncode == 0, launch.stderr
    assert launch.stdout == ""
    pid = int(pidfile.read_text())
    echo_daemons.track(pid)
    assert is_alive(pid)
    assert pid != launcher_pid
    assert parent_of(pid) not in (None, launcher_pid)
    # Ready means listening: the first connection attempt succeeds.
    assert echo(port, b"hello\n") == b"hello\n"
    assert echo(port, b"second line\n") == b"second line\n"
    assert stop(pid, signal.SIGTERM, timeout=10)
    assert not pidfile.exists(), "a clean exit removes the pidfile"
    text = log.read_text()
    assert f"listening on 127.0.0.1:{port}" in text
    assert "SIGTERM received" in text
    assert "stopped" in text
    assert "Traceback" not in text


def test_echo_server_on_a_taken_port_fails_loudly(echo_daemons: Daemons, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        launch, _, pidfile, _ = start_echo_server(tmp_path, port)
    assert launch.returncode != 0
    assert "OSError" in launch.stderr or "Address already in use" in launch.stderr
    assert "Address already in use" in launch.stderr
    assert not pidfile.exists(), "a failed start must not write a pidfile"
    match = re.search(r"\(pid (\d+)\)", launch.stderr)
    assert match, launch.stderr
    failed_pid = int(match.group(1))
    echo_daemons.track(failed_pid)
    assert wait_gone(failed_pid, 5), "the daemon that failed to start is still running"


def test_echo_server_rejects_a_missing_pidfile_directory(tmp_path: Path) -> None:
    log = tmp_path / "echo.log"
    pidfile = tmp_path / "missing" / "echo.pid"
    command = [sys.executable, str(ECHO_SERVER), "--port", str(free_port())]
    command += ["--pidfile", str(pidfile), "--log", str(log)]
    launch = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert launch.returncode == 2, "argparse rejects it, in the launcher, before any fork"
    assert "--pidfile" in launch.stderr
    assert not log.exists()
