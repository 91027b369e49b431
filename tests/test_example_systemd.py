"""The echo example under a (fake) systemd: Type=notify with socket activation.

A stand-in service manager, an interpreter whose process name is
``systemd``, passes a listening socket as fd 3 (``LISTEN_FDS``/``LISTEN_PID``)
and a notification socket (``NOTIFY_SOCKET``) to examples/echo_server.py,
as systemd does for ``examples/systemd/echo.service`` with ``echo.socket``.
The example must not fork, must say READY=1 once it serves, serve the
socket it was given, and exit 0 on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from conftest import PROJECT_DIR, Daemons, wait_gone

EXAMPLE = PROJECT_DIR / "examples" / "echo_server.py"

MANAGER = """
import json, os, sys
listener, notify_socket, result = int(sys.argv[1]), sys.argv[2], sys.argv[3]
command = sys.argv[4:]
child = os.fork()
if child == 0:
    os.dup2(listener, 3)
    env = dict(os.environ, LISTEN_FDS="1", LISTEN_FDNAMES="echo",
               LISTEN_PID=str(os.getpid()), NOTIFY_SOCKET=notify_socket)
    env.pop("PYTHONHOME", None)
    os.execve(command[0], command, env)
with open(result + ".pid", "w") as out:
    out.write(str(child))
status = os.waitpid(child, 0)[1]
with open(result, "w") as out:
    json.dump({"pid": child, "exit": os.waitstatus_to_exitcode(status)}, out)
"""


def test_echo_example_as_a_notify_service_with_socket_activation(
    daemons: Daemons,
    tmp_path: Path,
    systemd_python: list[str],
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(15)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    result = tmp_path / "manager.json"
    manager = subprocess.Popen(
        [
            *systemd_python,
            "-c",
            MANAGER,
            str(listener.fileno()),
            str(tmp_path / "notify.sock"),
            str(result),
            sys.executable,
            str(EXAMPLE),
            "--log",
            "-",
        ],
        pass_fds=(listener.fileno(),),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    daemons.track(manager.pid)
    listener.close()  # only the service holds it now
    try:
        message = notify.recv(4096).decode()
        service = int(Path(f"{result}.pid").read_text())
        daemons.track(service)
        assert "READY=1" in message.splitlines()
        assert f"STATUS=listening on 127.0.0.1:{port}" in message.splitlines()

        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"activated\n")
            assert client.makefile().readline() == "activated\n"
        with open(f"/proc/{service}/stat") as stat:
            assert int(stat.read().rsplit(")", 1)[1].split()[1]) == manager.pid  # no fork

        os.kill(service, signal.SIGTERM)
        assert wait_gone(service, 10)
        manager.wait(10)
        outcome = json.loads(result.read_text())
        assert outcome == {"pid": service, "exit": 0}
    finally:
        notify.close()
        if manager.poll() is None:
            manager.kill()
            manager.wait(5)
    out, _ = manager.communicate(timeout=5)
    # --log -: the daemon kept the stdout it was given (the journal's stream).
    assert b"SIGTERM received, shutting down" in out
