"""The threaded and the asyncio examples, run as a user would run them.

``examples/threaded_worker.py``: starts, works, reloads its config and
reopens its log on SIGHUP (after a logrotate-style rename), and on SIGTERM
finishes the jobs in hand and exits cleanly. ``examples/async_server.py``:
the launcher returns once it listens, SIGHUP re-reads the greeting (an
``async def`` handler), SIGTERM says goodbye to connected clients, a taken
port fails loudly. Processes are cleaned up by the pid in their pidfile.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    PROJECT_DIR,
    Daemons,
    free_port,
    is_alive,
    read_line,
    read_text,
    stop,
    wait_until,
)

WORKER = PROJECT_DIR / "examples" / "threaded_worker.py"
ASYNC_SERVER = PROJECT_DIR / "examples" / "async_server.py"


def launch(daemons: Daemons, command: list[str], pidfile: Path) -> tuple[int, str, int | None]:
    """Run a launcher to its end; return its status, its stderr and the daemon's pid."""
    try:
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30
        )
    finally:
        pid = int(pidfile.read_text()) if pidfile.exists() else None
        if pid is not None:
            daemons.track(pid)
    return result.returncode, result.stderr, pid


def test_threaded_worker_reloads_rotates_and_stops_cleanly(
    daemons: Daemons, tmp_path: Path
) -> None:
    pidfile, log, config = tmp_path / "worker.pid", tmp_path / "worker.log", tmp_path / "w.json"
    config.write_text('{"workers": 3, "pace": 0.01}')
    command = [sys.executable, str(WORKER), "--pidfile", str(pidfile), "--log", str(log)]
    status, stderr, pid = launch(daemons, [*command, "--config", str(config)], pidfile)
    assert status == 0, stderr
    assert pid is not None and is_alive(pid)
    assert wait_until(lambda: "squared is" in read_text(log), 10)
    assert "started 3 workers" in log.read_text()

    # logrotate: rename, then SIGHUP (postrotate). New lines go to a new file.
    config.write_text('{"workers": 3, "pace": 0.02}')
    log.rename(tmp_path / "worker.log.1")
    os.kill(pid, signal.SIGHUP)
    assert wait_until(lambda: "squared is" in read_text(log), 10), "nothing written after rotation"
    assert "config loaded: workers=3 pace=0.020" in log.read_text()
    assert "SIGHUP: reloading the config" in log.read_text()
    assert "SIGHUP" not in (tmp_path / "worker.log.1").read_text()

    assert stop(pid, signal.SIGTERM)
    final = log.read_text()
    assert "SIGTERM: stopping" in final
    assert final.count(": done") == 3
    assert final.rstrip().endswith("stopped cleanly")
    assert "Traceback" not in final + (tmp_path / "worker.log.1").read_text()
    assert not pidfile.exists()


def talk(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def async_command(tmp_path: Path, port: int, name: str = "async") -> list[str]:
    return [
        sys.executable,
        str(ASYNC_SERVER),
        "--port",
        str(port),
        "--pidfile",
        str(tmp_path / f"{name}.pid"),
        "--log",
        str(tmp_path / f"{name}.log"),
        "--greeting-file",
        str(tmp_path / "greeting.txt"),
    ]


def test_async_server_serves_reloads_and_says_goodbye(daemons: Daemons, tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "greeting.txt").write_text("hi\n")
    pidfile, log = tmp_path / "async.pid", tmp_path / "async.log"
    status, stderr, pid = launch(daemons, async_command(tmp_path, port), pidfile)
    assert status == 0, stderr
    assert pid is not None
    with talk(port) as client:  # ready meant listening: the first attempt connects
        client.sendall(b"one\n")
        assert read_line(client) == b"hi: one\n"
        (tmp_path / "greeting.txt").write_text("howdy\n")
        os.kill(pid, signal.SIGHUP)
        assert wait_until(lambda: "greeting is now 'howdy'" in read_text(log), 10)
        client.sendall(b"two\n")
        assert read_line(client) == b"howdy: two\n"
        os.kill(pid, signal.SIGTERM)
        assert read_line(client) == b"goodbye\n"
    assert stop(pid, signal.SIGTERM)  # already on its way out
    assert not pidfile.exists()
    text = log.read_text()
    assert "stopped; said goodbye to 1 client(s)" in text
    assert "Traceback" not in text


def test_async_server_on_a_taken_port_fails_loudly(daemons: Daemons, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        pidfile = tmp_path / "async.pid"
        status, stderr, pid = launch(daemons, async_command(tmp_path, port), pidfile)
    assert status == 1
    assert "address already in use" in stderr
    assert pid is None and not pidfile.exists()


@pytest.mark.parametrize("example", [WORKER, ASYNC_SERVER], ids=lambda path: path.name)
def test_examples_have_help(example: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(example), "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "--pidfile" in result.stdout
