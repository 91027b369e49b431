"""spoold, BEFORE the migration: a small spool daemon written with python-daemon.

It moves text files from an inbox to an outbox, transformed (upper or lower
case, from a JSON configuration file), and logs each one. SIGHUP re-reads
the configuration; SIGTERM stops it after the file in hand::

    python examples/migration/before.py --inbox /srv/spool/in --outbox /srv/spool/out \\
        --config /etc/spoold.json --pidfile /run/spoold.pid --log /var/log/spoold.log

This is how such programs are commonly written against python-daemon 3
(``daemon.DaemonContext`` with a ``TimeoutPIDLockFile``, open files for the
streams, handler functions in the signal map). What it cannot tell you:

- the command returns 0 right after the fork, before the daemon has done
  anything: a missing inbox, a bad configuration or a slow start are
  invisible to whoever started it (the traceback lands in the log file, if
  the log was already open);
- a second start also "succeeds": the new daemon waits for the pidfile
  lock, then dies in the background;
- after a crash or ``kill -9`` the pidfile stays, and every later start
  fails that way until someone deletes the file by hand.

examples/migration/after.py is the same program on daemonkit;
examples/README.md lists the changes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import daemon
import daemon.pidfile


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
    parser = argparse.ArgumentParser(description="spoold: a spool daemon (python-daemon)")
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
    stopping = []

    def request_stop(signum: int, frame: object) -> None:
        log("stop requested")
        stopping.append(signum)

    def reload(signum: int, frame: object) -> None:
        spooler.load_config()
        log(f"configuration reloaded: transform={spooler.transform}")

    with open(args.log, "a") as log_file:  # python-daemon wants open files
        context = daemon.DaemonContext(
            working_directory="/",
            umask=0o027,  # python-daemon's default, 0, would make every file world-writable
            pidfile=daemon.pidfile.TimeoutPIDLockFile(args.pidfile, acquire_timeout=2),
            stdout=log_file,
            stderr=log_file,
            signal_map={signal.SIGTERM: request_stop, signal.SIGHUP: reload},
        )
        with context:
            # The launching process has already exited 0 by now.
            time.sleep(args.delay)
            spooler.load_config()
            spooler.check_directories()
            log("started")
            while not stopping:
                spooler.process_waiting_files()
                time.sleep(spooler.interval)
            log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
