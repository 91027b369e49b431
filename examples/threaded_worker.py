"""A thread-pool daemon: declarative signals, log rotation, a graceful stop.

The daemon runs a few worker threads that take jobs from a queue (here:
numbers to square, made up by a feeder) and log what they do. It shows how a
threaded program uses daemonkit::

    python examples/threaded_worker.py --pidfile /tmp/worker.pid --log /tmp/worker.log \\
        --config /tmp/worker.json
    kill -HUP "$(cat /tmp/worker.pid)"    # reload the config, reopen the log file
    kill -TERM "$(cat /tmp/worker.pid)"   # finish the jobs in hand, then exit 0

- The signal map is declarative: ``signal_map={"TERM": "request_stop"}``
  makes SIGTERM only *request* the stop (``context.stop_requested``), so the
  main thread can wind the workers down in order instead of being
  interrupted by ``SystemExit``; ``@context.on_signal("HUP")`` reloads the
  configuration.
- Handlers run in the main thread, one at a time, even though workers are
  busy: the main thread waits in ``stop_requested.wait()``, which wakes for
  every signal, so a handler never waits for a long sleep to end.
- The ``logging`` FileHandler is configured *before* the context is entered:
  daemonkit keeps its file open across the detach by itself, and reopens it
  (and stdout/stderr, given as a path) on SIGHUP, so ``logrotate`` can
  rename the file and send SIGHUP (``postrotate``) without ``copytruncate``.
- Threads are started *inside* the ``with`` block: fork copies only the
  calling thread, and ``open()`` refuses to detach while other threads run.
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import threading
from pathlib import Path
from typing import Any

import daemonkit

log = logging.getLogger("worker")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A thread-pool daemon (started with daemonkit).")
    parser.add_argument("--pidfile", required=True, help="pidfile (locked while it runs)")
    parser.add_argument("--log", required=True, help="log file (reopened on SIGHUP)")
    parser.add_argument("--config", help='JSON file: {"workers": 4, "pace": 0.05}')
    parser.add_argument(
        "--foreground", action="store_true", help="do not detach (for systemd or a terminal)"
    )
    return parser.parse_args(argv)


class Settings:
    """The configuration, reloaded on SIGHUP; workers read it on every job."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.workers = 4
        self.pace = 0.05  # seconds between jobs
        self.load()

    def load(self) -> None:
        if self.path is None:
            return
        try:
            data: dict[str, Any] = json.loads(Path(self.path).read_text())
        except (OSError, ValueError) as exc:
            log.error("config %s not (re)loaded: %s", self.path, exc)  # keep the old one
            return
        self.workers = int(data.get("workers", self.workers))
        self.pace = float(data.get("pace", self.pace))
        log.info("config loaded: workers=%d pace=%.3f", self.workers, self.pace)


def feed(jobs: queue.Queue[int | None], stop: daemonkit.StopRequest, settings: Settings) -> None:
    """Make up jobs until the stop is requested."""
    number = 0
    while not stop.wait(settings.pace):
        jobs.put(number)
        number += 1


def work(name: str, jobs: queue.Queue[int | None]) -> None:
    """Do jobs until the ``None`` that tells this worker to leave."""
    while (job := jobs.get()) is not None:
        log.info("%s: %d squared is %d", name, job, job * job)
    log.info("%s: done", name)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    # Logging first: daemonkit sees the handler and keeps its file open.
    handler = logging.FileHandler(args.log)
    handler.setFormatter(logging.Formatter("%(asctime)s worker[%(process)d]: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    settings = Settings(args.config)

    context = daemonkit.DaemonContext(
        pidfile=daemonkit.PIDFile(args.pidfile),
        stdout=args.log,
        stderr=args.log,  # tracebacks land in the log too
        detach_process=False if args.foreground else None,
        signal_map={"TERM": "request_stop", "TSTP": None, "TTIN": None, "TTOU": None},
    )

    @context.on_signal("HUP")  # after daemonkit has reopened the log files
    def reload() -> None:
        log.info("SIGHUP: reloading the config")
        settings.load()

    with context:
        jobs: queue.Queue[int | None] = queue.Queue()
        workers = [
            threading.Thread(target=work, args=(f"worker-{n}", jobs), name=f"worker-{n}")
            for n in range(settings.workers)
        ]
        feeder = threading.Thread(
            target=feed, args=(jobs, context.stop_requested, settings), name="feeder"
        )
        for thread in (*workers, feeder):
            thread.start()
        log.info("started %d workers", len(workers))
        context.stop_requested.wait()  # SIGHUP handlers still run while it waits
        log.info("SIGTERM: stopping; finishing %d queued jobs", jobs.qsize())
        feeder.join()
        for _ in workers:
            jobs.put(None)
        for thread in workers:
            thread.join()
        log.info("stopped cleanly")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
