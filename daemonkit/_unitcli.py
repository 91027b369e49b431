"""The ``daemonkit unit`` command line: its options, and turning them into a call.

:func:`add_arguments` gives the ``unit`` subparser its options and
:func:`run` calls :func:`daemonkit.unit.systemd_unit` or
:func:`daemonkit.unit.sysv_script` with them, printing the result or writing
it to a file; :func:`main` is ``python -m daemonkit.unit``.

The ``daemonkit`` command builds every subcommand's parser on each run
(``daemonkit status`` too), so this module is kept apart from the
generators and imports them only inside :func:`run`: what a start-up costs
is this file, not the code that writes units. For the same reason
:data:`RESTART_POLICIES`, which ``--restart`` offers as choices, is
defined here (and re-exported by :mod:`daemonkit.unit`).
"""

from __future__ import annotations

import os
import sys

from .cli import _env, _umask  # the same values as daemonkit start takes

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

__all__ = ["RESTART_POLICIES", "USAGE", "add_arguments", "main", "run"]

# The values of systemd's Restart= (systemd.service(5)).
RESTART_POLICIES = (
    "no",
    "on-success",
    "on-failure",
    "on-abnormal",
    "on-watchdog",
    "on-abort",
    "always",
)


def _number(text: str) -> float:
    """``--timeout``, ``--restart-sec``, ``--watchdog``: finite seconds >= 0."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


USAGE = "daemonkit unit NAME [OPTIONS] -- CMD [ARG...]"


def _add_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``daemonkit unit`` (without NAME and CMD)."""
    parser.add_argument(
        "--sysv", action="store_true", help="print an LSB init script instead of a systemd unit"
    )
    parser.add_argument(
        "--notify",
        action="store_true",
        help="the program calls daemonkit.ready() / sends READY=1: Type=notify "
        "(--sysv: start waits for it)",
    )
    parser.add_argument(
        "--forking",
        action="store_true",
        help="Type=forking with daemonkit start and PIDFile= (needs --pidfile)",
    )
    parser.add_argument("--pidfile", help="the pidfile daemonkit locks (--sysv: /run/NAME.pid)")
    parser.add_argument("--user", help="run as this user (User=, or daemonkit's --user)")
    parser.add_argument("--group", help="run as this group")
    parser.add_argument("--chdir", help="working directory (default /)")
    parser.add_argument("--umask", type=_umask, help="umask, octal (default 022)")
    parser.add_argument("--chroot", help="change root to this directory first")
    parser.add_argument("--stdout", help="append the program's stdout to this file")
    parser.add_argument("--stderr", help="append the program's stderr to this file")
    parser.add_argument(
        "--env", type=_env, action="append", default=[], metavar="K=V", help="set a variable"
    )
    parser.add_argument("--description", help="Description= (default: NAME (run by daemonkit))")
    parser.add_argument(
        "--timeout", type=_number, help="seconds to wait for the start (TimeoutStartSec=)"
    )
    parser.add_argument(
        "--restart",
        choices=RESTART_POLICIES,
        default="on-failure",
        help="Restart= (default on-failure)",
    )
    parser.add_argument("--restart-sec", type=_number, default=2.0, help="RestartSec= (default 2)")
    parser.add_argument(
        "--watchdog", type=_number, metavar="SEC", help="WatchdogSec= (needs --notify)"
    )
    parser.add_argument(
        "--reload-signal",
        default="HUP",
        metavar="SIG",
        help="signal for reload (default HUP; 'none': no reload)",
    )
    parser.add_argument("--no-hardening", action="store_true", help="leave the sandbox options out")
    parser.add_argument(
        "--writable",
        action="append",
        default=[],
        metavar="PATH",
        help="also let the sandboxed service write here (ReadWritePaths=)",
    )
    parser.add_argument(
        "--respawn",
        nargs="?",
        const="on-failure",
        choices=("on-failure", "always"),
        help="--sysv only: daemonkit start --respawn (systemd units use --restart)",
    )
    parser.add_argument(
        "--daemonkit",
        metavar="PATH",
        help="the daemonkit command the service calls (default: this installation's)",
    )
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="write to FILE (mode 0644, --sysv 0755)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` (the ``unit`` subcommand's) its options and arguments.

    NAME and CMD are one ``REMAINDER`` argument, ``args.unit_words``, which
    :func:`run` splits at the first ``--`` and parses again: argparse alone
    cannot take options between NAME and ``-- CMD``.
    """
    parser.usage = USAGE
    _add_options(parser)
    import argparse

    parser.add_argument(
        "unit_words", nargs=argparse.REMAINDER, metavar="NAME [OPTIONS] -- CMD [ARG...]"
    )


def _say(text: str) -> None:
    """One line to stderr, named as the subcommand's."""
    print(f"daemonkit: unit: {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """``daemonkit unit``: print (or write) the unit or the init script.

    ``args`` comes from a parser set up by :func:`add_arguments`. Returns the
    exit status: 0, or 6 (bad configuration) with the reason on stderr.
    """
    import argparse

    words = list(args.unit_words)
    split = words.index("--") if "--" in words else len(words)
    head, command = words[:split], words[split + 1 :]
    again = argparse.ArgumentParser(prog="daemonkit unit", usage=USAGE)
    _add_options(again)
    again.add_argument("name", metavar="NAME")
    _, stray = again.parse_known_args(head, namespace=args)  # --help exits here
    options = [word for word in stray if word.startswith("-")]
    if options:
        _say(f"unknown option {options[0]!r} (daemonkit unit --help lists them)")
        return 6
    if stray:
        _say(f"{' '.join(stray)!r}: the command goes after -- (usage: {USAGE})")
        return 6
    if split == len(words):
        _say(f"no command given (usage: {USAGE})")
        return 6
    reload_signal = None if args.reload_signal.lower() == "none" else args.reload_signal
    common = {
        "pidfile": args.pidfile,
        "user": args.user,
        "group": args.group,
        "description": args.description,
        "working_directory": args.chdir,
        "umask": args.umask,
        "chroot": args.chroot,
        "stdout": args.stdout,
        "stderr": args.stderr,
        "environment": dict(args.env),
        "timeout": args.timeout,
        "reload_signal": reload_signal,
        "daemonkit": args.daemonkit,
    }
    # Here, not at the top: the daemonkit command imports this module on every run.
    from ._lazy import errors
    from ._unitvalues import _fail
    from .unit import systemd_unit, sysv_script

    try:
        if args.sysv:
            for option, given in (
                ("--forking", args.forking),
                ("--watchdog", args.watchdog is not None),
                ("--writable", bool(args.writable)),
                ("--no-hardening", args.no_hardening),
            ):
                if given:
                    raise _fail(f"{option} is for systemd units, not for --sysv")
            text = sysv_script(
                args.name, command, notify=args.notify, respawn=args.respawn, **common
            )
        else:
            if args.respawn is not None:
                raise _fail(
                    "systemd restarts the service itself: use --restart, not --respawn "
                    "(--respawn is for --sysv)"
                )
            text = systemd_unit(
                args.name,
                command,
                notify=args.notify,
                forking=args.forking,
                restart=args.restart,
                restart_sec=args.restart_sec,
                watchdog_sec=args.watchdog,
                hardening=not args.no_hardening,
                writable_paths=args.writable,
                **common,
            )
    except errors.ConfigurationError as exc:
        _say(str(exc))
        return 6
    if args.output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return 0
    try:
        _write(args.output, text, 0o755 if args.sysv else 0o644)
    except OSError as exc:
        _say(f"cannot write {args.output}: {exc.strerror or exc}")
        return 1
    _say(f"wrote {args.output}")
    return 0


def _write(path: str, text: str, mode: int) -> None:
    """Write ``text`` to ``path`` whole (a temporary file renamed over it)."""
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            os.fchmod(out.fileno(), mode)
        os.rename(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m daemonkit.unit NAME [OPTIONS] -- CMD``: the subcommand on its own."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="daemonkit unit",
        description="Print a systemd unit (or, with --sysv, an LSB init script) that runs "
        "CMD under the daemonkit command.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
