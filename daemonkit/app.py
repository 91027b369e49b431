"""The ``Daemon`` app runner: start/stop/restart/status/reload/run for a Python program.

::

    app = daemonkit.Daemon("heartbeat", pidfile="/run/heartbeat.pid", stdout="/var/log/hb.log")

    @app.main
    def serve() -> None:
        ...

    @app.on_reload
    def reload() -> None:          # runs on SIGHUP (``reload``)
        ...

    if __name__ == "__main__":
        app.cli()                  # heartbeat.py start|stop|restart|status|reload|run

The subcommands behave, and exit, as the ``daemonkit`` command's do (LSB
codes); ``start`` and ``run`` enter a :class:`~daemonkit.DaemonContext`
built from the keyword arguments given here.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence

from . import control
from .context import DaemonContext
from .errors import AlreadyRunningError, ConfigurationError, DaemonError
from .pidfile import PIDFile
from .signals import default_signal_map

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from typing import Any, NoReturn, TypeVar

    F = TypeVar("F", bound=Callable[[], Any])

__all__ = ["Daemon"]


def _default_pidfile(name: str) -> str:
    if os.geteuid() == 0:
        return f"/run/{name}.pid"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return os.path.join(runtime, f"{name}.pid")


class Daemon:
    """A program's daemon life cycle from one object: see the module docstring."""

    __module__ = "daemonkit"

    def __init__(
        self, name: str, pidfile: str | os.PathLike[str] | None = None, **context_options: Any
    ) -> None:
        if not name or "/" in name:
            raise ConfigurationError(f"Daemon name {name!r} must be a non-empty word")
        if "pidfile" in context_options or "detach_process" in context_options:
            raise ConfigurationError("Daemon sets pidfile= and detach_process= itself")
        self.name = name
        self.pidfile = os.fspath(pidfile) if pidfile is not None else _default_pidfile(name)
        self.context_options = context_options
        self._main: Callable[[], Any] | None = None
        self._reload: Callable[[], Any] | None = None

    def main(self, function: F) -> F:
        """Decorator: the program's main loop, run inside the daemon."""
        self._main = function
        return function

    def on_reload(self, function: F) -> F:
        """Decorator: run on SIGHUP (what ``reload`` sends)."""
        self._reload = function
        return function

    def context(self, detach: bool) -> DaemonContext:
        """The DaemonContext ``start`` (detach) and ``run`` (foreground) enter."""
        options = dict(self.context_options)
        if not detach:  # in the foreground, output goes where ``run``'s caller sees it
            options.setdefault("stdout", sys.stdout)
            options.setdefault("stderr", sys.stderr)
        if self._reload is not None:
            handler = self._reload
            signal_map = dict(options.pop("signal_map", None) or default_signal_map())
            signal_map[signal.SIGHUP] = lambda signum, frame: handler()
            options["signal_map"] = signal_map
        return DaemonContext(pidfile=PIDFile(self.pidfile), detach_process=detach, **options)

    def _serve(self, detach: bool, supervision: dict[str, Any] | None = None) -> int:
        """Enter the context and run ``@main``; with ``supervision`` (Supervisor
        keywords), run it in a child that is restarted as they say."""
        if self._main is None:
            raise ConfigurationError(f"{self.name}: no @main function was registered")
        supervisor = None
        if supervision is not None:
            from .supervise import Supervisor

            supervisor = Supervisor(self._main, name=self.name, **supervision)
        context = self.context(detach)
        if supervisor is not None and "wait_ready" not in self.context_options:
            context.wait_ready = True  # ready once @main survived its first moments
        try:
            context.open()
        except AlreadyRunningError as exc:
            print(f"{self.name}: already running: {exc}", file=sys.stderr)
            return 0
        with context:
            if supervisor is not None:
                return int(supervisor.run())
            self._main()
        return 0

    def _parser(self) -> argparse.ArgumentParser:
        from .cli import EXIT_CODES

        parser = argparse.ArgumentParser(
            prog=self.name,
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub = parser.add_subparsers(dest="action", required=True, metavar="COMMAND")
        from .cli import add_supervision_options

        for name, text in (
            ("start", "start as a daemon; return once it is ready"),
            ("run", "run in the foreground (systemd, containers)"),
        ):
            add_supervision_options(sub.add_parser(name, help=text))
        for name, text in (("stop", "stop the daemon"), ("restart", "stop, then start")):
            command = sub.add_parser(name, help=text)
            command.add_argument("--retry", default="TERM/30/KILL/5", help="stop schedule")
            if name == "restart":
                add_supervision_options(command)
        status = sub.add_parser("status", help="is it running? (LSB exit codes)")
        status.add_argument("--json", action="store_true")
        reload = sub.add_parser("reload", help="send SIGHUP")
        reload.add_argument("--signal", default="HUP")
        return parser

    def run_command(self, argv: Sequence[str] | None = None) -> int:
        """Run one subcommand; return its exit status (``cli`` exits with it)."""
        args = self._parser().parse_args(argv)
        try:
            options = None
            if args.action in ("start", "run", "restart"):
                from .cli import _Misconfigured, supervision_options

                try:
                    options = supervision_options(args, args.action != "run")
                except _Misconfigured as exc:
                    print(f"{self.name}: {exc}", file=sys.stderr)
                    return 6
            if args.action in ("start", "run"):
                return self._serve(args.action == "start", options)
            if args.action in ("stop", "restart"):
                result = control.stop(self.pidfile, retry=args.retry)
                print(f"{self.name}: {result.message}", file=sys.stderr)
                if args.action == "stop" or not result.stopped:
                    return result.code
                return self._serve(True, options)
            if args.action == "status":
                found = control.status(self.pidfile)
                print(json.dumps(found.as_dict()) if args.json else found.describe())
                return found.code
            found = control.reload(self.pidfile, args.signal)
            if not found.running:
                print(f"{self.name}: cannot reload: {found.describe()}", file=sys.stderr)
                return 7
            return 0
        except DaemonError as exc:
            print(f"{self.name}: {exc}", file=sys.stderr)
            return 6 if isinstance(exc, ValueError) else 1

    def cli(self, argv: Sequence[str] | None = None) -> NoReturn:
        """Parse ``argv`` (default: ``sys.argv[1:]``), run it, exit with its status."""
        sys.exit(self.run_command(argv))
