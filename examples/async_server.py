"""An asyncio TCP server as a daemon: ``daemonkit.run_async`` and a graceful stop.

Each line a client sends comes back prefixed with a greeting read from a
configuration file; SIGHUP re-reads the greeting::

    python examples/async_server.py --port 8008 --pidfile /tmp/async.pid \\
        --log /tmp/async.log --greeting-file /tmp/greeting.txt
    kill -HUP "$(cat /tmp/async.pid)"     # re-read the greeting, reopen the log
    kill -TERM "$(cat /tmp/async.pid)"    # stop accepting, say goodbye, exit 0

How it uses daemonkit:

- ``daemonkit.run_async(serve(...))`` inside the ``with`` block runs the
  coroutine on a new event loop with the context's signal map bridged to
  the loop: the SIGHUP handler (an ``async def``, registered with
  ``@context.on_signal``) runs as a task on the loop, and SIGTERM cancels
  the main task, so ``serve``'s ``finally`` closes the server and tells
  every client goodbye before the daemon exits with status 0.
- ``wait_ready=True`` with ``daemonkit.ready()`` once the socket listens:
  the launcher's exit status says whether the server really started (a
  taken port makes it print the daemon's error and exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import daemonkit


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} async_server[{os.getpid()}]: {message}", flush=True)


class Greeter:
    """The greeting, re-read on SIGHUP; clients connected meanwhile see the new one."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.text = "hello"
        self.load()

    def load(self) -> None:
        if self.path is None:
            return
        try:
            self.text = Path(self.path).read_text().strip() or self.text
        except OSError as exc:
            log(f"greeting not (re)loaded from {self.path}: {exc.strerror}")


async def serve(host: str, port: int, greeter: Greeter) -> None:
    clients: set[asyncio.StreamWriter] = set()

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        clients.add(writer)
        try:
            while line := await reader.readline():
                writer.write(f"{greeter.text}: ".encode() + line)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client left, or the daemon is stopping (cancelled at shutdown)
        finally:
            clients.discard(writer)
            writer.close()

    server = await asyncio.start_server(talk, host, port)
    log(f"listening on {host}:{port}")
    daemonkit.ready(f"listening on {host}:{port}")  # the launcher exits 0 now
    try:
        await asyncio.Event().wait()  # serve until SIGTERM cancels this task
    finally:
        server.close()
        for writer in list(clients):
            writer.write(b"goodbye\n")
            writer.close()
        log(f"stopped; said goodbye to {len(clients)} client(s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An asyncio TCP server run as a daemon.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--pidfile", required=True)
    parser.add_argument("--log", required=True, help="stdout and stderr (reopened on SIGHUP)")
    parser.add_argument("--greeting-file", help="file holding the greeting (re-read on SIGHUP)")
    args = parser.parse_args(argv)

    greeter = Greeter(args.greeting_file)
    context = daemonkit.DaemonContext(
        pidfile=daemonkit.PIDFile(args.pidfile),
        stdout=args.log,
        stderr=args.log,
        wait_ready=True,
        ready_timeout=30,
    )

    @context.on_signal("HUP")
    async def reload() -> None:  # runs as a task on the loop
        greeter.load()
        log(f"SIGHUP: greeting is now {greeter.text!r}")

    try:
        with context:
            daemonkit.run_async(serve(args.host, args.port, greeter))
    except daemonkit.DaemonError as exc:  # bad configuration, in the launcher
        print(f"async_server: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
