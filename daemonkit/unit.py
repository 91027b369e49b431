"""Service definitions for the daemonkit command: systemd units and SysV init scripts.

:func:`systemd_unit` writes a ``.service`` file and :func:`sysv_script` an
LSB init script, both running a command under the ``daemonkit`` command;
``daemonkit unit NAME [OPTIONS] -- CMD`` prints either (:func:`add_arguments`
and :func:`run` are that subcommand).

Under systemd the service manager is the supervisor, so the unit's
``ExecStart=`` is ``daemonkit run`` (never ``--respawn``: ``Restart=`` does
that). ``run`` sets the process up (pidfile lock, umask, directory, log
files, chroot) and then *execs* the command, so the program itself is the
unit's main process: its ``READY=1`` (``daemonkit.ready()``) reaches
systemd's ``$NOTIFY_SOCKET`` directly, which makes ``Type=notify`` work, and
``systemctl stop`` signals the program, not a wrapper. A program that does
not notify gets ``Type=exec``. ``forking=True`` gives the classic variant:
``daemonkit start`` detaches, returns once the program is up (or ready, with
``notify``), and systemd reads the main pid from ``PIDFile=``.

The user and group are systemd's ``User=``/``Group=`` (the whole service,
daemonkit included, then runs unprivileged, and ``RuntimeDirectory=`` is
created for that user), except with a chroot, which needs root: then
daemonkit changes root first and drops privileges after (``--user``).

Every word of a command line is quoted by systemd's rules
(:manpage:`systemd.syntax(7)`, :manpage:`systemd.service(5)`): ``%`` is
written ``%%`` (specifiers), ``$`` is ``$$`` (variable expansion), words
with spaces, quotes, backslashes or a lone ``;`` are double-quoted with
C-style escapes. So the program gets exactly the arguments it was given.

This module is the public face and the systemd generator; the rest lives
in small modules, each with one job, and is imported from here:
:mod:`daemonkit._unitvalues` checks and quotes the values both generators
take, :mod:`daemonkit._sysv` writes the init script, and
:mod:`daemonkit._unitcli` is the ``daemonkit unit`` command line (which
the ``daemonkit`` command loads on every run, so it loads the generators
only when ``daemonkit unit`` runs).
"""

from __future__ import annotations

import os
import re

from ._sysv import sysv_script
from ._unitcli import RESTART_POLICIES, add_arguments, main, run
from ._unitvalues import (
    _HOME_TREES,
    _absolute,
    _command_groups,
    _fail,
    _format_seconds,
    _log_relative,
    _Options,
    _run_relative,
    _seconds,
    _under,
    _wrap,
    default_daemonkit,
    shell_quote,
    systemd_quote,
)

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "HARDENING",
    "RESTART_POLICIES",
    "add_arguments",
    "default_daemonkit",
    "main",
    "run",
    "shell_quote",
    "systemd_quote",
    "systemd_unit",
    "sysv_script",
]


# The sandbox every generated unit gets unless hardening=False: options of
# systemd.exec(5) that an ordinary network or socket daemon does not notice
# (all in systemd 247 and later; tests/test_unit.py checks each name against
# systemd.directives(7) and has systemd-analyze verify the result).
HARDENING = (
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallErrorNumber", "EPERM"),
)

# A service using files here cannot have PrivateTmp= (its own empty /tmp).
_TMP_TREES = ("/tmp", "/var/tmp")


# --- systemd ----------------------------------------------------------------


def systemd_unit(
    name: str,
    command: Sequence[str],
    *,
    notify: bool = False,
    pidfile: str | os.PathLike[str] | None = None,
    forking: bool = False,
    user: str | int | None = None,
    group: str | int | None = None,
    description: str | None = None,
    working_directory: str | os.PathLike[str] | None = None,
    umask: int | None = None,
    chroot: str | os.PathLike[str] | None = None,
    stdout: str | os.PathLike[str] | None = None,
    stderr: str | os.PathLike[str] | None = None,
    environment: Mapping[str, str] | None = None,
    restart: str = "on-failure",
    restart_sec: float = 2.0,
    timeout: float | None = None,
    watchdog_sec: float | None = None,
    reload_signal: str | int | None = "HUP",
    hardening: bool = True,
    writable_paths: Sequence[str | os.PathLike[str]] = (),
    after: Sequence[str] = ("network.target",),
    wanted_by: str | None = "multi-user.target",
    daemonkit: str | Sequence[str] | None = None,
) -> str:
    """The text of a systemd service unit that runs ``command`` under daemonkit.

    ``notify``: the program calls ``daemonkit.ready()`` (or sends sd_notify
    ``READY=1``) once it serves; the unit is ``Type=notify``, so ``systemctl
    start`` returns only then, and fails if the program dies first. Without
    it the unit is ``Type=exec``. Do not set it for a program that never
    notifies: systemd would wait ``TimeoutStartSec=`` and then kill it.

    ``forking``: ``Type=forking`` with ``daemonkit start`` (``pidfile`` is
    then required, and becomes ``PIDFile=``), for setups that expect a
    daemon that detaches; ``notify`` then makes ``daemonkit start`` wait for
    ``READY=1`` before it returns.

    ``pidfile``, ``working_directory``, ``umask``, ``chroot``, ``stdout``,
    ``stderr``, ``environment`` and ``timeout`` are daemonkit's ``start``/
    ``run`` options (``environment`` as ``Environment=`` lines). A pidfile
    under ``/run/DIR/`` makes ``RuntimeDirectory=DIR`` (created for the
    service's user at each start), log files under ``/var/log/DIR/`` make
    ``LogsDirectory=DIR``. ``user``/``group`` become ``User=``/``Group=``
    (with ``chroot``: daemonkit's ``--user``/``--group``).

    ``restart`` is ``Restart=`` (one of :data:`RESTART_POLICIES`),
    ``restart_sec`` ``RestartSec=``; exit statuses 5 and 6 (daemonkit's
    "command not found" and "bad configuration") are not restarted.
    ``watchdog_sec`` is ``WatchdogSec=`` (needs ``notify``, not
    ``forking``). ``reload_signal`` (default SIGHUP, which reopens the log
    files of a daemonkit program) makes ``ExecReload=``; None leaves reload
    out. ``hardening`` adds the sandbox options of :data:`HARDENING`, with
    the paths the service writes in ``ReadWritePaths=`` (and
    ``writable_paths``); ``PrivateTmp=`` and ``ProtectHome=`` are relaxed
    when the command or its files live under /tmp or a home directory.
    ``daemonkit`` is how the service calls the daemonkit command (default:
    :func:`default_daemonkit`). Raises :class:`~daemonkit.ConfigurationError`
    (a ``ValueError``) for anything systemd would refuse or misread.
    """
    options = _Options(
        name,
        command,
        pidfile=pidfile,
        user=user,
        group=group,
        description=description,
        working_directory=working_directory,
        umask=umask,
        chroot=chroot,
        stdout=stdout,
        stderr=stderr,
        environment=environment,
        timeout=timeout,
        reload_signal=reload_signal,
        daemonkit=daemonkit,
    )
    if restart not in RESTART_POLICIES:
        raise _fail(f"restart must be one of {', '.join(RESTART_POLICIES)}, not {restart!r}")
    delay = _seconds(restart_sec, "restart_sec")
    watchdog = _seconds(watchdog_sec, "watchdog_sec")
    if forking and options.pidfile is None:
        raise _fail("a forking unit (daemonkit start) needs a pidfile: systemd reads PIDFile=")
    if watchdog is not None and (not notify or forking):
        raise _fail(
            "watchdog_sec needs notify=True without forking: the program's WATCHDOG=1 "
            "pings reach systemd only when the program is the unit's main process"
        )
    unsafe = sorted({c for c in options.daemonkit[0] if c in "\"'\\$" or ord(c) < 0x20})
    if unsafe:
        # systemd refuses quotes, backslashes and control characters in the
        # executable's path ("special characters"), and runs it without
        # expanding variables, so "$$" there would stay "$$".
        raise _fail(
            f"the daemonkit command's path {options.daemonkit[0]!r} contains "
            f"{' '.join(repr(c) for c in unsafe)}: systemd cannot run a program from such a "
            "path; install daemonkit elsewhere"
        )
    writable = [_absolute(path, "writable path") for path in writable_paths]
    for target in after:
        _check_unit_reference(target, "after")
    if wanted_by is not None:
        _check_unit_reference(wanted_by, "wanted_by")

    # With a chroot daemonkit must start as root: it drops privileges itself.
    owner_by_daemonkit = options.chroot is not None
    action = "start" if forking else "run"
    groups = [
        [*options.daemonkit, action],
        *options.start_options(
            owner=owner_by_daemonkit, notify=forking and notify, environment=False
        ),
        *_command_groups(options.command),
    ]
    exec_start = [[systemd_quote(word) for word in group] for group in groups]

    # A template (NAME@.service) is enabled and started as NAME@INSTANCE.
    started = options.name + ("INSTANCE" if options.name.endswith("@") else "")
    out: list[str] = [
        f"# {options.name}.service: generated by `daemonkit unit`.",
        f"# Install: save as /etc/systemd/system/{options.name}.service, then",
        f"#   systemctl daemon-reload && systemctl enable --now {started}",
        "",
        "[Unit]",
        f"Description={options.description.replace('%', '%%')}",
    ]
    if after:
        out.append(f"After={' '.join(after)}")
    out += ["", "[Service]"]
    if forking and options.pidfile is not None:
        out += [
            "# daemonkit start detaches and returns once the program is "
            + ("ready (READY=1);" if notify else "up;"),
            "# systemd then reads the main pid from the pidfile daemonkit keeps locked.",
            "Type=forking",
            f"PIDFile={options.pidfile.replace('%', '%%')}",
        ]
    elif notify:
        out += [
            "# daemonkit run sets the process up, then execs the program, which says",
            "# READY=1 (daemonkit.ready()) to systemd itself once it serves.",
            "Type=notify",
        ]
    else:
        out += [
            "# daemonkit run sets the process up, then execs the program (the main process).",
            "Type=exec",
        ]
    out.append(_wrap(exec_start, "ExecStart=", "    "))
    if options.reload_signal is not None:
        if options.pidfile:
            reload_words = [*options.daemonkit, "reload", "--pidfile", options.pidfile]
            if options.reload_signal != "HUP":
                reload_words += ["--signal", options.reload_signal]
            out.append(
                _wrap([[systemd_quote(word) for word in reload_words]], "ExecReload=", "    ")
            )
        else:
            out.append(f"ExecReload=/bin/kill -{options.reload_signal} $MAINPID")
    if not owner_by_daemonkit:
        if options.user is not None:
            out.append(f"User={options.user}")
        if options.group is not None:
            out.append(f"Group={options.group}")
    for key, value in options.environment:
        out.append(f"Environment={systemd_quote(f'{key}={value}', dollar=False)}")
    if options.working_directory:
        out.append(f"WorkingDirectory={options.working_directory.replace('%', '%%')}")

    read_write: list[str] = []
    if options.pidfile:
        relative = _run_relative(options.pidfile)
        if relative is not None:
            out.append(f"RuntimeDirectory={relative.replace('%', '%%')}")
        else:
            read_write.append(os.path.dirname(options.pidfile))
    log_directories: list[str] = []
    for log in (options.stdout, options.stderr):
        if log:
            relative = _log_relative(log)
            if relative is not None:
                if relative not in log_directories:
                    log_directories.append(relative)
            else:
                read_write.append(os.path.dirname(log))
    for relative in log_directories:
        out.append(f"LogsDirectory={relative.replace('%', '%%')}")
    read_write += [path for path in writable if path is not None]

    out.append(f"SyslogIdentifier={options.name.replace('%', '%%')}")
    out.append(f"Restart={restart}")
    if delay is not None:
        out.append(f"RestartSec={_format_seconds(delay)}")
    out.append("# 5: command not found, 6: bad configuration; restarting would not help")
    out.append("RestartPreventExitStatus=5 6")
    out.append("# SIGTERM to the program only; whatever it leaves behind gets SIGKILL later")
    out.append("KillMode=mixed")
    if options.timeout is not None:
        # daemonkit start waits that long itself; leave it room to say why it failed
        margin = 10.0 if forking else 0.0
        out.append(f"TimeoutStartSec={_format_seconds(options.timeout + margin)}")
    if watchdog is not None:
        out.append(f"WatchdogSec={_format_seconds(watchdog)}")

    if hardening:
        out += _hardening(options, read_write)
    if wanted_by is not None:
        out += ["", "[Install]", f"WantedBy={wanted_by}"]
    return "\n".join(out) + "\n"


def _check_unit_reference(value: str, what: str) -> None:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9:_.\\@-]+", value):
        raise _fail(f"{what}: {value!r} is not a unit name (such as network.target)")


def _hardening(options: _Options, read_write: list[str]) -> list[str]:
    """The sandbox lines, adapted to where the service's files are."""
    paths = options.paths()
    lines = ["", "# Sandbox (systemd-analyze security shows what more could be closed)."]
    for key, value in HARDENING:
        if key == "PrivateTmp" and any(_under(path, _TMP_TREES) for path in paths):
            lines.append("# PrivateTmp= left out: the service uses files under /tmp or /var/tmp")
            continue
        if key == "ProtectHome" and any(_under(path, _HOME_TREES) for path in paths):
            lines.append("# the service uses files in a home directory: read-only, not hidden")
            value = "read-only"
        if key == "SystemCallFilter" and options.chroot:
            value += " chroot"
        lines.append(f"{key}={value}")
    unique: list[str] = []
    for path in read_write:
        if path not in unique:
            unique.append(path)
    if unique:
        lines.append(f"ReadWritePaths={' '.join(path.replace('%', '%%') for path in unique)}")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
