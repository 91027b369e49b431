"""A TCP echo server that runs as a Unix daemon, started with daemonkit.

Every line a client sends is sent back to it. The command returns only once
the daemon is listening (exit status 0), or prints the daemon's own error and
exits non-zero if it could not start (for example, the port is taken)::

    python examples/echo_server.py --port 8007 --pidfile /tmp/echo.pid --log /tmp/echo.log
    nc 127.0.0.1 8007              # or any TCP client: type lines, see them echoed
    python -c "import daemonkit.pidfile as p; print(p.status('/tmp/echo.pid'))"
    kill "$(cat /tmp/echo.pid)"    # SIGTERM: a clean exit; the pidfile is removed

``examples/run_example.sh`` does all of this and checks the results.

Under systemd (``examples/systemd/``) the same program needs no change: its
parent is the service manager, so daemonkit does not fork, ``ready()`` sends
``READY=1`` to ``$NOTIFY_SOCKET`` (``Type=notify``), and with a socket unit
it serves the socket systemd passes (socket activation) instead of binding
its own.

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
import daemonkit.notify


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
    parser.add_argument(
        "--port",
        type=int,
        help="TCP port to listen on (not needed when systemd passes the socket)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument("--pidfile", help="pidfile (daemonkit's locked PIDFile); optional")
    parser.add_argument(
        "--log",
        help="file for the daemon's stdout and stderr (default: /dev/null); '-' keeps "
        "the ones it was given, which a systemd service wants: they go to the journal",
    )
    parser.add_argument(
        "--detach",
        action="store_true",
        help="always detach (for a Type=forking unit; by default daemonkit decides: "
        "not under a service manager, yes from a shell)",
    )
    parser.add_argument(
        "--delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="simulate a slow start: wait this long before binding the socket (default: 0)",
    )
    args = parser.parse_args(argv)
    if args.port is not None and not 0 <= args.port <= 65535:
        parser.error(f"--port must be from 0 to 65535, not {args.port}")
    if args.delay < 0:
        parser.error("--delay must not be negative")
    # The daemon changes its working directory to "/": resolve paths now.
    if args.pidfile is not None:
        args.pidfile = os.path.abspath(args.pidfile)
        if not os.path.isdir(os.path.dirname(args.pidfile)):
            parser.error(f"--pidfile: directory {os.path.dirname(args.pidfile)!r} does not exist")
    if args.log not in (None, "-"):
        args.log = os.path.abspath(args.log)
    return args


def make_server(args: argparse.Namespace) -> EchoServer:
    """The server, on the socket systemd passed (socket activation) or a new one."""
    activated = daemonkit.notify.listen_fds()
    if activated:
        server = EchoServer(activated[0].getsockname()[:2], EchoHandler, bind_and_activate=False)
        server.socket.close()
        server.socket = activated[0]
        return server
    if args.port is None:
        raise SystemExit("echo_server: give --port, or start it from a systemd socket unit")
    return EchoServer((args.host, args.port), EchoHandler)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    stream = (sys.stdout, sys.stderr) if args.log == "-" else (args.log, args.log)

    context = daemonkit.DaemonContext(
        pidfile=daemonkit.PIDFile(args.pidfile) if args.pidfile else None,
        working_directory="/",
        detach_process=True if args.detach else None,
        stdout=stream[0],
        stderr=stream[1],
        wait_ready=True,
        ready_timeout=max(10.0, args.delay + 10.0),
    )
    try:
        context.open()
    except daemonkit.AlreadyRunningError as exc:
        # Decided in the launcher, before any fork: nothing was started.
        print(f"echo_server: already running: {exc}", file=sys.stderr)
        return 0
    # From here on we are the daemon (or, under systemd, the service itself);
    # whoever started us is waiting for ready().
    with context:
        if args.delay:
            time.sleep(args.delay)
        # An error here (port taken, bad address) escapes the with block before
        # ready(): daemonkit sends its traceback to the launcher, which prints
        # it and exits non-zero.
        server = make_server(args)
        try:
            host, port = server.socket.getsockname()[:2]
            log(f"listening on {host}:{port}")
            daemonkit.ready(f"listening on {host}:{port}")  # launcher or systemd
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
