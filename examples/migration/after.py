"""spoold, AFTER the migration: examples/migration/before.py on daemonkit.

The same job (the ``Spooler`` class is unchanged, line for line) and the
same command line::

    python examples/migration/after.py --inbox /srv/spool/in --outbox /srv/spool/out \\
        --config /etc/spoold.json --pidfile /run/spoold.pid --log /var/log/spoold.log

What changed, and what it buys:

1. ``import daemon`` became ``import daemonkit``. ``daemonkit.DaemonContext``
   takes python-daemon's keywords, so ``import daemonkit as daemon`` alone
   would already run; the rest are the idiomatic improvements.
2. ``daemonkit.PIDFile`` instead of ``TimeoutPIDLockFile``: its lock is taken
   by the launching process before the fork, so a second start says
   "already running as pid N" at once (exit 0, as LSB asks), and a pidfile
   left by ``kill -9`` is stale, not locked: the next start takes it over.
3. ``stdout``/``stderr`` are paths, not open files: daemonkit opens them
   (checking them before the fork) and reopens them on SIGHUP, so logrotate
   needs no ``copytruncate``.
4. ``wait_ready=True`` and ``daemonkit.ready()`` once the setup is done: the
   command returns only when the daemon really works, and a failed start
   (a missing inbox, a bad configuration) prints the daemon's traceback and
   exits 1 instead of 0.
5. Signals by name; SIGTERM is ``"request_stop"`` (it sets
   ``context.stop_requested``, which the main loop waits on, so a stop is
   seen at once rather than after the next sleep), and the SIGHUP handler is
   registered with ``@context.on_signal`` and takes no arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import daemonkit


def log(message: str) -> None:
    """One timestamped line on stdout, which is the log file in the daemon."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} spoold[{os.getpid()}]: {message}", flush=True)


class Spooler:
    """The job itself: nothing here knows about daemons."""

    def __init__(self, inbox: str, outbox: str, config: str | None) -> None:
        self.inbox, self.outbox, self.config = inbox, outbox, config
        self.transform = "upper"
        self.interval = 0.05

    def load_config(self) -> None:
        if self.config is None:
            return
        with open(self.config) as file:
            settings = json.load(file)
        if settings.get("transform", "upper") not in ("upper", "lower"):
            raise ValueError(f"{self.config}: transform must be 'upper' or 'lower'")
        self.transform = settings.get("transform", "upper")
        self.interval = float(settings.get("interval", 0.05))

    def check_directories(self) -> None:
        for folder in (self.inbox, self.outbox):
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"spool directory {folder} does not exist")

    def process_waiting_files(self) -> None:
        for name in sorted(os.listdir(self.inbox)):
            if name.startswith(".") or not name.endswith(".txt"):
                continue
            source = os.path.join(self.inbox, name)
            with open(source) as file:
                text = file.read()
            text = text.upper() if self.transform == "upper" else text.lower()
            partial = os.path.join(self.outbox, f".{name}.partial")
            with open(partial, "w") as file:
                file.write(text)
            os.rename(partial, os.path.join(self.outbox, name))
            os.unlink(source)
            log(f"processed {name}")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="spoold: a spool daemon (daemonkit)")
    parser.add_argument("--inbox", required=True)
    parser.add_argument("--outbox", required=True)
    parser.add_argument("--config", help="JSON: {'transform': 'upper'|'lower'}")
    parser.add_argument("--pidfile", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="simulate a slow start")
    args = parser.parse_args()
    for name in ("inbox", "outbox", "config", "pidfile", "log"):
        if getattr(args, name) is not None:  # the daemon runs in /
            setattr(args, name, os.path.abspath(getattr(args, name)))
    return args


def main() -> int:
    args = parse_arguments()
    spooler = Spooler(args.inbox, args.outbox, args.config)

    context = daemonkit.DaemonContext(
        working_directory="/",
        umask=0o027,  # kept; daemonkit's default is 0o022 (python-daemon's is 0)
        pidfile=daemonkit.PIDFile(args.pidfile),
        stdout=args.log,
        stderr=args.log,
        signal_map={"TERM": "request_stop"},
        wait_ready=True,
    )

    @context.on_signal("HUP")  # runs after daemonkit reopened the log file
    def reload() -> None:
        spooler.load_config()
        log(f"configuration reloaded: transform={spooler.transform}")

    try:
        context.open()
    except daemonkit.AlreadyRunningError as exc:  # decided before any fork
        print(f"spoold: already running: {exc}", file=sys.stderr)
        return 0
    with context:
        # The launching process is still waiting: an exception here is its
        # exit status 1 and its error message.
        time.sleep(args.delay)
        spooler.load_config()
        spooler.check_directories()
        log("started")
        daemonkit.ready()  # now the launching process exits 0
        while True:
            spooler.process_waiting_files()
            if context.stop_requested.wait(spooler.interval):
                log("stop requested")
                break
        log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
