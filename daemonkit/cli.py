"""The ``daemonkit`` command: run any program as a daemon, and control it.

A thin layer over :class:`daemonkit.DaemonContext` (``start``, ``run``) and
:mod:`daemonkit.control` (``stop``, ``status``, ``reload``), with LSB exit
codes that init scripts, Ansible and monitoring understand.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from typing import Any, NoReturn

EXIT_CODES = """\
exit codes:
  start, restart, run  0 started (or already running), 1 failed to start,
                       5 command not found, 6 bad configuration
  stop                 0 stopped (or was not running), 1 could not stop it
  status               0 running, 1 dead but the pidfile remains,
                       3 not running, 4 unknown (e.g. no permission)
  reload               0 signalled, 7 not running
"""

LSB_NOT_INSTALLED, LSB_NOT_CONFIGURED, LSB_NOT_RUNNING = 5, 6, 7


def _umask(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal umask such as 022") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"umask {text!r} is out of range (000 to 777)")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # negative, NaN or not a number
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def _backoff(text: str) -> tuple[float, float]:
    low, sep, high = text.partition("..")
    try:
        bounds = (float(low), float(high)) if sep else (float(low), float(low))
    except ValueError:
        bounds = (-1.0, -1.0)
    if not (0 <= bounds[0] <= bounds[1] < float("inf")):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not LOW..HIGH seconds with 0 <= LOW <= HIGH (such as 0.1..30)"
        )
    return bounds


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def _env(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--env {text!r}: expected KEY=VALUE")
    return key, value


def _add_start_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pidfile", help="pidfile to lock and write (daemonkit's PIDFile)")
    parser.add_argument("--chdir", default="/", help="working directory (default: /)")
    parser.add_argument("--umask", type=_umask, default=0o022, help="umask, octal (default 022)")
    parser.add_argument("--user", help="run as this user (name or uid; needs root)")
    parser.add_argument("--group", help="run as this group (default: the user's)")
    parser.add_argument("--chroot", help="change root to this directory (needs root)")
    parser.add_argument("--stdout", help="append the program's stdout to this file")
    parser.add_argument("--stderr", help="append the program's stderr to this file")
    parser.add_argument(
        "--env", type=_env, action="append", default=[], metavar="K=V", help="set a variable"
    )
    parser.add_argument(
        "--notify",
        action="store_true",
        help="wait for the program's sd_notify READY=1 (it gets $NOTIFY_SOCKET), "
        "not just for a successful exec",
    )
    parser.add_argument(
        "--timeout", type=_seconds, default=None, help="seconds to wait for readiness (default 90)"
    )
    parser.add_argument("--name", help="name used in messages (default: the command)")
    add_supervision_options(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")


def add_supervision_options(parser: argparse.ArgumentParser) -> None:
    """``--respawn``, ``--backoff``, ``--max-restarts``, ``--within``, ``--init``, ``-g``."""
    supervision = parser.add_argument_group(
        "supervision", "keep CMD running under a supervisor process (PID 1 duty with --init)"
    )
    supervision.add_argument(
        "--respawn",
        nargs="?",
        const="on-failure",
        default="no",
        choices=("no", "on-failure", "always"),
        help="restart CMD when it exits: on-failure (the default when given) or always",
    )
    supervision.add_argument(
        "--backoff",
        type=_backoff,
        default=None,
        metavar="LOW..HIGH",
        help="restart delay in seconds, doubling after each failed run (default 0.1..30)",
    )
    supervision.add_argument(
        "--max-restarts",
        type=_count,
        default=None,
        metavar="N",
        help="give up after more than N restarts within --within seconds",
    )
    supervision.add_argument(
        "--within",
        type=_seconds,
        default=None,
        metavar="S",
        help="the start-limit window; a run this long also resets the backoff (default 10)",
    )
    supervision.add_argument(
        "--init",
        action="store_true",
        help="act as init: reap orphaned zombies, forward signals (automatic as PID 1)",
    )
    supervision.add_argument(
        "-g",
        "--process-group",
        action="store_true",
        help="put CMD in its own process group and forward signals to the whole group",
    )


def _command(args: argparse.Namespace) -> list[str]:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    return command


def _say(args: argparse.Namespace, text: str) -> None:
    name = args.name or (os.path.basename(_command(args)[0]) if _command(args) else "daemonkit")
    print(f"daemonkit: {name}: {text}", file=sys.stderr, flush=True)


def _context(args: argparse.Namespace, detach: bool) -> Any:
    from . import DaemonContext, PIDFile

    keep = (sys.stdout, sys.stderr) if not detach else (None, None)

    def owner(value: str | None) -> int | str | None:
        if value is not None and value.isascii() and value.isdigit():
            return int(value)
        return value

    return DaemonContext(
        working_directory=args.chdir,
        umask=args.umask,
        uid=owner(args.user),
        gid=owner(args.group),
        chroot_directory=args.chroot,
        stdout=args.stdout or keep[0],
        stderr=args.stderr or keep[1],
        pidfile=PIDFile(args.pidfile) if args.pidfile else None,
        detach_process=detach,
        wait_ready=True,
        ready_timeout=args.timeout,
    )


def _find_command(name: str, path: str | None, root: str | None, workdir: str) -> str | None:
    """The absolute path to exec for ``name``, as seen by the program, or None.

    With a chroot, the program is looked up inside it (``PATH`` entries and
    ``workdir`` are the program's, relative to the new root), since that is
    where the exec happens.
    """
    import shutil  # here: only start and run need it (5 ms)

    if root is None:
        found = shutil.which(name, path=path)
        return None if found is None else os.path.abspath(found)
    root = os.path.abspath(root)
    if "/" in name:
        candidates = [os.path.normpath(os.path.join("/", workdir, name))]
    else:
        folders = (path or os.defpath).split(os.pathsep)
        candidates = [os.path.join(folder, name) for folder in folders if folder.startswith("/")]
    for inside in candidates:
        outside = root.rstrip("/") + inside
        if os.path.isfile(outside) and os.access(outside, os.X_OK):
            return inside
    return None


def _program(args: argparse.Namespace) -> tuple[list[str], str, dict[str, str]] | int:
    """The command, the executable to exec and its environment; or the exit code."""
    command = _command(args)
    if not command:
        _say(args, "no command given (usage: daemonkit start [OPTIONS] -- CMD [ARG...])")
        return LSB_NOT_CONFIGURED
    environment = dict(os.environ)
    environment.update(dict(args.env))
    executable = _find_command(command[0], environment.get("PATH"), args.chroot, args.chdir)
    if executable is None:
        where = f" inside the chroot {args.chroot}" if args.chroot else ""
        _say(args, f"command not found{where}: {command[0]}")
        return LSB_NOT_INSTALLED
    return command, executable, environment


def _supervisor(
    args: argparse.Namespace, detach: bool, command: list[str], executable: str, env: dict[str, str]
) -> Any:
    """The Supervisor ``run``/``start`` use instead of exec, or None to exec.

    ``run`` supervises with ``--respawn`` or ``--init``, and always as PID 1
    (a plain program there would neither reap orphans nor get signals it
    does not handle); ``start`` with ``--respawn`` or ``--init``.
    """
    options = supervision_options(args, detach)
    if options is None:
        return None
    from .supervise import Supervisor

    return Supervisor(
        command,
        notify=args.notify,
        ready_timeout=args.timeout if args.timeout is not None else 90.0,
        grace=min(0.2, args.timeout / 2) if args.timeout else 0.2,
        env=env,
        executable=executable,
        name=args.name or os.path.basename(command[0]),
        **options,
    )


def supervision_options(args: argparse.Namespace, detach: bool) -> dict[str, Any] | None:
    """Supervisor keywords from :func:`add_supervision_options`' arguments;
    None if nothing is to be supervised (raises ``_Misconfigured`` for options
    that need ``--respawn``)."""
    supervising = args.respawn != "no" or args.init or (not detach and os.getpid() == 1)
    if not supervising:
        for option, value in (
            ("--backoff", args.backoff),
            ("--max-restarts", args.max_restarts),
            ("--within", args.within),
        ):
            if value is not None:
                raise _Misconfigured(f"{option} needs --respawn")
        if args.process_group:
            raise _Misconfigured("--process-group needs --respawn or --init")
        return None
    return {
        "respawn": args.respawn,
        "backoff": args.backoff or (0.1, 30.0),
        "max_restarts": args.max_restarts,
        "within": args.within if args.within is not None else 10.0,
        "init": True if args.init else None,
        "process_group": args.process_group,
    }


class _Misconfigured(Exception):
    """A combination of options that cannot work (exit 6)."""


def _launch(args: argparse.Namespace, detach: bool) -> int:
    """``start`` and ``run``: set the process up through DaemonContext, then exec
    (or, supervising, run CMD under a :class:`~daemonkit.supervise.Supervisor`)."""
    from ._activation import handed_down_environment
    from .errors import ConfigurationError

    found = _program(args)
    if isinstance(found, int):
        return found
    command, executable, environment = found
    if args.pidfile:  # the daemon works in --chdir: a relative path would change meaning
        args.pidfile = os.path.abspath(args.pidfile)
    try:
        supervisor = _supervisor(args, detach, command, executable, environment)
    except (_Misconfigured, ConfigurationError) as exc:
        _say(args, str(exc))
        return LSB_NOT_CONFIGURED
    context = _context(args, detach)
    if supervisor is not None:
        return _supervise(args, detach, context, supervisor)
    receiver = None
    if args.notify and detach:
        from .notify import NotifySocketReceiver, pidfile_notify_name

        name = pidfile_notify_name(args.pidfile) if args.pidfile else None
        receiver = NotifySocketReceiver(name)
        environment.update(receiver.environment())
    context._exec_is_ready = True  # then, with --notify, READY=1 on the receiver
    context._notify_receiver = receiver
    failed = _open_context(args, context)  # the launcher does not come back: it exits
    if failed is not None:
        return failed
    lock_fd = None
    if context.pidfile is not None:
        lock_fd = context.pidfile.fileno()
        os.set_inheritable(lock_fd, True)  # the program keeps the lock
    # A program that uses DaemonContext itself must neither detach again nor
    # close the lock: tell it (for this pid only) that it is a daemon already.
    environment.update(handed_down_environment(os.getpid(), lock_fd))
    try:
        os.execve(executable, command, environment)
    except OSError as exc:
        from . import readiness

        message = f"cannot execute {executable}: {exc.strerror}"
        if args.chroot:
            message = (
                f"cannot execute {executable} inside the chroot {args.chroot}: {exc.strerror} "
                "(the program, its interpreter and its libraries must all be inside it)"
            )
        if not readiness.pending():  # run: nobody waits; say it here
            _say(args, message)
        readiness.report_text(message)
        os._exit(127)
    return 1  # not reached


def _open_context(args: argparse.Namespace, context: Any) -> int | None:
    """``context.open()``; the exit status if it failed (already running is 0)."""
    from .errors import AlreadyRunningError, ConfigurationError, DaemonError

    try:
        context.open()
    except AlreadyRunningError as exc:
        _say(args, f"already running: {exc}")
        return 0
    except ConfigurationError as exc:
        _say(args, str(exc))
        return LSB_NOT_CONFIGURED
    except DaemonError as exc:
        _say(args, str(exc))
        return 1
    return None


def _supervise(args: argparse.Namespace, detach: bool, context: Any, supervisor: Any) -> int:
    """Enter the context, then supervise CMD in this process (the daemon, for start)."""
    failed = _open_context(args, context)
    if failed is not None:
        return failed
    if detach:  # what the supervisor relays goes where ``reload --notify`` listens
        os.environ.pop("NOTIFY_SOCKET", None)
        if args.notify and args.pidfile:
            from .notify import pidfile_notify_name

            os.environ["NOTIFY_SOCKET"] = "@" + pidfile_notify_name(args.pidfile)
    try:
        return int(supervisor.run())
    finally:
        context.close()


def _stop(args: argparse.Namespace) -> int:
    from . import control

    result = control.stop(
        args.pidfile, sig=args.signal, retry=args.retry, timeout=args.timeout, group=args.group
    )
    print(f"daemonkit: {result.message}", file=sys.stderr)
    return result.code


def _status(args: argparse.Namespace) -> int:
    from . import control

    found = control.status(args.pidfile)
    if args.json:
        import json  # here: only status --json needs it

        print(json.dumps(found.as_dict()))
    else:
        print(found.describe())
    return found.code


def _reload(args: argparse.Namespace) -> int:
    from . import control

    found = control.reload(args.pidfile, args.signal, notify=args.notify, timeout=args.timeout)
    if not found.running or found.pid is None:
        print(f"daemonkit: cannot reload: {found.describe()}", file=sys.stderr)
        return LSB_NOT_RUNNING
    done = " and it reported RELOADING=1, then READY=1" if args.notify else ""
    print(f"daemonkit: sent SIG{args.signal.upper().removeprefix('SIG')} to pid {found.pid}{done}")
    return 0


def _unit(args: argparse.Namespace) -> int:
    from . import _unitcli as unit

    return unit.run(args)


def _restart(args: argparse.Namespace) -> int:
    from . import control

    found = _program(args)  # a bad command must not cost the running daemon
    if isinstance(found, int):
        return found
    if args.pidfile:
        result = control.stop(args.pidfile, retry=args.retry)
        if not result.stopped:
            print(f"daemonkit: restart: {result.message}", file=sys.stderr)
            return 1
    return _launch(args, detach=True)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (public for documentation tools)."""
    parser = argparse.ArgumentParser(
        prog="daemonkit",
        description="Run any program as a well-behaved daemon, and control it by its pidfile.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="COMMAND")

    def add(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=text,
            description=text,
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    start = add("start", "start CMD as a daemon; return once it is up")
    _add_start_options(start)
    run = add("run", "run CMD in the foreground with the same setup (systemd, containers)")
    _add_start_options(run)
    restart = add("restart", "stop the daemon named by --pidfile, then start CMD")
    _add_start_options(restart)
    restart.add_argument("--retry", default="TERM/30/KILL/5", help="stop's retry schedule")
    stop = add("stop", "stop the daemon holding --pidfile; wait until it is gone")
    stop.add_argument("--pidfile", required=True)
    stop.add_argument("--signal", default="TERM", help="signal to send (default TERM)")
    stop.add_argument("--retry", help="schedule such as TERM/30/KILL/5 (start-stop-daemon's)")
    stop.add_argument("--timeout", type=_seconds, default=30.0, help="seconds to wait (default 30)")
    stop.add_argument("--group", action="store_true", help="signal the whole process group")
    status = add("status", "tell whether the daemon holding --pidfile runs (LSB codes)")
    status.add_argument("--pidfile", required=True)
    status.add_argument("--json", action="store_true", help="one JSON object on stdout")
    reload = add("reload", "send SIGHUP (or --signal) to the daemon holding --pidfile")
    reload.add_argument("--pidfile", required=True)
    reload.add_argument("--signal", default="HUP", help="signal to send (default HUP)")
    reload.add_argument(
        "--notify",
        action="store_true",
        help="wait for the daemon's RELOADING=1 and READY=1 (started with start --notify)",
    )
    reload.add_argument("--timeout", type=_seconds, default=90.0, help="seconds to wait")
    from . import _unitcli as unit

    unit.add_arguments(
        add(
            "unit",
            "print a systemd unit (--sysv: an LSB init script) that runs CMD under daemonkit",
        )
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    from .errors import DaemonError

    actions = {
        "start": lambda: _launch(args, detach=True),
        "run": lambda: _launch(args, detach=False),
        "restart": lambda: _restart(args),
        "stop": lambda: _stop(args),
        "status": lambda: _status(args),
        "reload": lambda: _reload(args),
        "unit": lambda: _unit(args),
    }
    try:
        return actions[args.action]()
    except DaemonError as exc:
        print(f"daemonkit: {exc}", file=sys.stderr)
        return LSB_NOT_CONFIGURED if isinstance(exc, ValueError) else 1
    except OSError as exc:  # e.g. out of descriptors or memory: one line, not a traceback
        print(f"daemonkit: {args.action} failed: {exc}", file=sys.stderr)
        return 1


def run() -> NoReturn:
    """Console-script entry point: ``main()``, then exit without interpreter teardown.

    Nothing the command did needs Python's finalization (files are closed,
    output is flushed here), and skipping it makes ``stop`` return within a
    millisecond or two of the daemon's exit instead of several.
    """
    code = main()
    from . import _posix

    _posix.flush_standard_streams()
    os._exit(code)
