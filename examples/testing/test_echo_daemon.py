"""Testing a daemon with daemonkit's pytest plugin: ``examples/echo_server.py``.

Installing daemonkit gives pytest the ``daemon_runner`` fixture; there is
nothing to import or configure. Each test starts the real server as a real
daemon and returns once it is ready; whatever the test leaves running,
passed or failed, is killed by pid when it ends. Run from the repository::

    python -m pytest examples/testing -q
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from daemonkit.testing import DaemonRunner, DaemonStartError

ECHO_SERVER = Path(__file__).resolve().parent.parent / "echo_server.py"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_echo_server_echoes_and_stops_cleanly(daemon_runner: DaemonRunner) -> None:
    """Under ``daemonkit start --notify``: ready means listening; SIGTERM exits 0."""
    port = free_port()
    server = daemon_runner.start_command(
        [sys.executable, ECHO_SERVER, "--port", str(port), "--log", "-"], notify=True
    )
    assert server.wait_for_message("STATUS=") == f"STATUS=listening on 127.0.0.1:{port}"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"hello\n")
        assert client.makefile("rb").readline() == b"hello\n"
    assert server.stop() == 0
    assert "SIGTERM received, shutting down" in server.log()


def test_echo_server_detaches_by_itself(daemon_runner: DaemonRunner, tmp_path: Path) -> None:
    """Its own DaemonContext detaches it; the pidfile names the daemon."""
    pidfile = tmp_path / "echo.pid"
    server = daemon_runner.start_launcher(
        [sys.executable, ECHO_SERVER, "--port", str(free_port()), "--pidfile", pidfile],
        pidfile=pidfile,
    )
    assert pidfile.read_text().strip() == str(server.pid)
    assert server.stop() == 0
    assert not pidfile.exists()


def test_a_taken_port_fails_the_start(daemon_runner: DaemonRunner) -> None:
    """The daemon's own error reaches the test through its launcher."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        with pytest.raises(DaemonStartError, match="Address already in use"):
            daemon_runner.start_launcher([sys.executable, ECHO_SERVER, "--port", port])
