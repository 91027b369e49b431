"""A TCP echo server that runs as a Unix daemon, started with daemonkit.

Every line a client sends is sent back to it. The command returns only once
the daemon is listening (exit status 0), or prints the daemon's own error and
exits non-zero if it could not start (for example, the port is taken)::

    python examples/echo_server.py --port 8007 --pidfile /tmp/echo.pid --log /tmp/echo.log
    nc 127.0.0.1 8007              # or any TCP client: type lines, see them echoed
    python -c "import daemonkit.pidfile as p; print(p.status('/tmp/echo.pid'))"
    kill "$(cat /tmp/echo.pid)"    # SIGTERM: a clean exit; the pidfile is removed

``examples/run_example.sh`` does all of this and checks the results.

How it uses daemonkit: the socket is bound *inside* the ``with`` block, in the
daemon, and ``daemonkit.ready()`` is called once it listens
(``wait_ready=True``), so the launcher's exit status tells whether the server
really started. stdout and stderr go to the ``--log`` file (daemonkit accepts
paths). SIGTERM is handled by the default signal map: it raises
``SystemExit(0)`` in the daemon, so the ``finally`` block closes the socket
and removes the pidfile.

The pidfile is daemonkit's ``PIDFile``: its lock is taken by the launcher
before anything else happens, so a second start says "already running as pid
N" at once (and, as LSB asks of a start that finds the service running,
exits 0), and the lock is held by the daemon for its whole life, so a pidfile
left by a crash or ``kill -9`` is recognised as stale and simply taken over by
the next start.
"""

from __future__ import annotations

import argparse
import os
import socketserver
import sys
import time

import daemonkit


class EchoHandler(socketserver.StreamRequestHandler):
    """Send every line back to the client that sent it."""

    timeout = 300  # seconds of client silence before the connection is dropped

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class EchoServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True  # a restart need not wait for TIME_WAIT to pass
    daemon_threads = True  # client threads never delay the daemon's exit


def log(message: str) -> None:
    """One timestamped line on stdout, which is the log file in the daemon."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} echo_server[{os.getpid()}]: {message}", flush=True)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="A TCP echo server that runs as a daemon (started with daemonkit)."
    )
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--pidfile", required=True, help="file the daemon writes its process id into"
    )
    parser.add_argument("--log", required=True, help="file for the daemon's stdout and stderr")
    parser.add_argument(
        "--delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="simulate a slow start: wait this long before binding the socket (default: 0)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be from 0 to 65535, not {args.port}")
    if args.delay < 0:
        parser.error("--delay must not be negative")
    # The daemon changes its working directory to "/": resolve paths now.
    args.pidfile = os.path.abspath(args.pidfile)
    args.log = os.path.abspath(args.log)
    if not os.path.isdir(os.path.dirname(args.pidfile)):
        parser.error(f"--pidfile: directory {os.path.dirname(args.pidfile)!r} does not exist")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    context = daemonkit.DaemonContext(
        pidfile=daemonkit.PIDFile(args.pidfile),
        working_directory="/",
        stdout=args.log,
        stderr=args.log,
        wait_ready=True,
        ready_timeout=max(10.0, args.delay + 10.0),
    )
    try:
        context.open()
    except daemonkit.AlreadyRunningError as exc:
        # Decided in the launcher, before any fork: nothing was started.
        print(f"echo_server: already running: {exc}", file=sys.stderr)
        return 0
    # From here on we are the daemon; the launcher is waiting for ready().
    with context:
        if args.delay:
            time.sleep(args.delay)
        # An error here (port taken, bad address) escapes the with block before
        # ready(): daemonkit sends its traceback to the launcher, which prints
        # it and exits non-zero.
        server = EchoServer((args.host, args.port), EchoHandler)
        try:
            where = f"{args.host}:{server.socket.getsockname()[1]}"
            log(f"listening on {where}")
            daemonkit.ready(f"listening on {where}")
            server.serve_forever()
        except SystemExit:
            # SIGTERM arrives as SystemExit(0), raised by the default signal map.
            log("SIGTERM received, shutting down")
            raise
        finally:
            server.server_close()
            log("stopped")  # leaving the with block removes the pidfile
    return 0


if __name__ == "__main__":
    sys.exit(main())
