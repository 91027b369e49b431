"""A small service as it would run in a container, under ``daemonkit run --init``.

It answers one line per TCP connection on ``$HOST:$PORT`` (default
127.0.0.1:8080):

``ping``
    ``pong PID`` (the worker's pid, so a client can see a restart).
``spawn N``
    starts N background helpers through ``sh -c '... &'`` and forgets them,
    as shell-outs and some libraries do: each helper outlives its shell, is
    re-parented to PID 1 and becomes a zombie there unless PID 1 reaps it.
``crash``
    exits with status 3 at once (a bug): ``--respawn`` starts it again.

SIGTERM (``docker stop``) makes it finish the connection in hand and exit 0.
It is an ordinary foreground program: it neither forks to the background
nor writes a pidfile; daemonkit, as PID 1, does the rest.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys


def serve(host: str, port: int) -> int:
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    with socket.create_server((host, port)) as server:
        server.settimeout(0.2)  # look at ``stopping`` this often
        print(f"worker {os.getpid()} listening on {host}:{port}", flush=True)
        while not stopping:
            try:
                connection, _ = server.accept()
            except (TimeoutError, InterruptedError):
                continue
            with connection:
                request = connection.recv(100).decode(errors="replace").split()
                connection.sendall(answer(request).encode() + b"\n")
    print(f"worker {os.getpid()} stopped", flush=True)
    return 0


def answer(request: list[str]) -> str:
    if request == ["ping"]:
        return f"pong {os.getpid()}"
    if len(request) == 2 and request[0] == "spawn" and request[1].isdigit():
        for _ in range(int(request[1])):
            # The shell exits at once; its background sleep is an orphan.
            subprocess.run(["sh", "-c", "sleep 0.2 &"], check=True)
        return f"spawned {request[1]}"
    if request == ["crash"]:
        print(f"worker {os.getpid()} crashing", flush=True)
        os._exit(3)
    return "unknown request"


if __name__ == "__main__":
    sys.exit(serve(os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8080"))))
