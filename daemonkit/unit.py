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
"""

from __future__ import annotations

import os
import re
import sys

from ._lazy import errors

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable, Mapping, Sequence

    from .errors import ConfigurationError

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

RESTART_POLICIES = (
    "no",
    "on-success",
    "on-failure",
    "on-abnormal",
    "on-watchdog",
    "on-abort",
    "always",
)

# Words written bare on a command line: nothing in them is special to
# systemd's parser (quotes, backslashes, whitespace and ';' are not in the
# set; '%' and '$' are doubled before this check). A shell also needs '$'
# quoted. (Patterns are compiled on first use, by re's cache: compiling them
# all at import would cost the daemonkit command milliseconds on every run.)
_BARE_WORD = r"[A-Za-z0-9_@%$+=:,./-]+"
_SHELL_BARE_WORD = r"[A-Za-z0-9_@%+=:,./-]+"
_UNIT_NAME = r"[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?"
_USER_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?"
_ENV_KEY = r"[A-Za-z_][A-Za-z0-9_]*"
# Paths that also appear in directives taking plain (unquoted) values.
_PLAIN_PATH = r"/[^\s\"'\\;\x00-\x1f\x7f]*"
_C_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}

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

_TMP_TREES = ("/tmp", "/var/tmp")
_HOME_TREES = ("/home", "/root", "/run/user")


def _fail(message: str) -> ConfigurationError:
    """A ConfigurationError (also a ValueError) to raise."""
    return errors.ConfigurationError(message)


# --- quoting ----------------------------------------------------------------


def _check_text(text: str, what: str) -> None:
    """Refuse what no unit file or script can carry: NUL bytes and non-UTF-8 text."""
    if "\0" in text:
        raise _fail(f"{what} contains a NUL byte: {text!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _fail(f"{what} is not valid UTF-8 text: {text!r}") from None


def _c_escape(character: str) -> str:
    """One character as it may stand inside a double-quoted systemd word."""
    escaped = _C_ESCAPES.get(character)
    if escaped is not None:
        return escaped
    code = ord(character)
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    if 0x80 <= code < 0xA0:  # C1 controls: as code points, not bytes
        return f"\\u{code:04x}"
    return character


def systemd_quote(word: str, *, dollar: bool = True) -> str:
    """``word`` as one item of a systemd command line (or, with
    ``dollar=False``, of an ``Environment=`` assignment), by the rules of
    :manpage:`systemd.syntax(7)` and :manpage:`systemd.service(5)`.

    ``%`` becomes ``%%`` (no specifier expansion) and, on command lines,
    ``$`` becomes ``$$`` (no variable expansion); a word that holds anything
    else the parser treats specially (whitespace, quotes, backslashes, a
    lone ``;``, control characters) or is empty is double-quoted, with
    C-style escapes. Plain words stay bare, for readability.
    """
    _check_text(word, "a command-line word")
    text = word.replace("%", "%%")
    if dollar:
        text = text.replace("$", "$$")
    if re.fullmatch(_BARE_WORD, text):
        return text
    return '"' + "".join(_c_escape(character) for character in text) + '"'


def shell_quote(word: str) -> str:
    """``word`` for a POSIX shell (bare when nothing in it is special)."""
    _check_text(word, "a command-line word")
    if re.fullmatch(_SHELL_BARE_WORD, word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def _command_groups(command: Sequence[str]) -> list[list[str]]:
    """``["--", PROGRAM]``, then the arguments, an option kept with its value
    (``--port 8007``) so that wrapped lines read well."""
    groups = [["--", command[0]]]
    words = list(command[1:])
    while words:
        word = words.pop(0)
        if word.startswith("-") and "=" not in word and words and not words[0].startswith("-"):
            groups.append([word, words.pop(0)])
        else:
            groups.append([word])
    return groups


def _wrap(groups: Sequence[Sequence[str]], first: str, indent: str, width: int = 100) -> str:
    """Join groups of quoted words into lines of at most ``width`` columns
    (where the groups allow: a group is never split), continued with a
    trailing backslash; ``first`` starts the first line, ``indent`` the others."""
    lines: list[str] = []
    line = first
    for group in groups:
        text = " ".join(group)
        if line in (first, indent):
            line += text
        elif len(line) + 1 + len(text) + 2 > width:
            lines.append(line + " \\")
            line = indent + text
        else:
            line += " " + text
    lines.append(line)
    return "\n".join(lines)


# --- validation -------------------------------------------------------------


def _unit_name(name: str) -> str:
    """The unit's name without ``.service``, checked as systemd checks unit names."""
    if not isinstance(name, str):
        raise _fail(f"the unit name must be a string, not {name!r}")
    base = name.removesuffix(".service")
    if not base or not re.fullmatch(_UNIT_NAME, base) or base.startswith(("-", ".")):
        raise _fail(
            f"unit name {name!r} is not valid: use letters, digits and : _ . - \\ "
            "(an @ makes a template), not starting with - or ., such as echo-server"
        )
    if len(base) + len(".service") > 255:
        raise _fail(f"unit name {name!r} is too long: systemd allows 255 characters")
    return base


def _command(command: Sequence[str]) -> list[str]:
    if isinstance(command, str):
        raise _fail(
            f"the command must be a list of words (the program and its arguments), "
            f"not the string {command!r}"
        )
    words = list(command)
    if not words:
        raise _fail("no command given: the service needs a program to run (-- CMD [ARG...])")
    for word in words:
        if not isinstance(word, str):
            raise _fail(f"command words must be strings, not {word!r}")
        _check_text(word, "the command")
    if not words[0]:
        raise _fail("the command's first word (the program to run) is empty")
    return words


def _absolute(path: str | os.PathLike[str] | None, option: str) -> str | None:
    """``path`` normalised, if it is an absolute path systemd can take bare."""
    if path is None:
        return None
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else path
    if not isinstance(text, str):
        raise _fail(f"{option} must be a text path, not {path!r}")
    _check_text(text, option)
    if not text.startswith("/"):
        raise _fail(f"{option} must be an absolute path, not {text!r}")
    text = os.path.normpath(text)
    if text.startswith("//"):
        text = "/" + text.lstrip("/")
    if not re.fullmatch(_PLAIN_PATH, text):
        raise _fail(
            f"{option} {text!r} has whitespace, quotes, a backslash, ';' or a control "
            "character: unit files take such paths only in some places; use a plain path"
        )
    return text


def _owner(value: str | int | None, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _fail(f"the {what} must be a name or a number, not {value!r}")
    text = str(value)
    if not re.fullmatch(_USER_NAME, text) or text.startswith("-"):
        raise _fail(f"{what} {text!r} is not a valid {what} name or number")
    return text


def _environment(environment: Mapping[str, str] | None) -> list[tuple[str, str]]:
    if environment is None:
        return []
    pairs = list(environment.items())
    for key, value in pairs:
        if not isinstance(key, str) or not re.fullmatch(_ENV_KEY, key):
            raise _fail(
                f"environment variable name {key!r} is not valid (letters, digits and _, "
                "not starting with a digit)"
            )
        if not isinstance(value, str):
            raise _fail(f"the value of {key} must be a string, not {value!r}")
        _check_text(value, f"the value of {key}")
    return pairs


def _seconds(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise _fail(f"{what} must be a number of seconds >= 0, not {value!r}")
    if value == float("inf"):
        raise _fail(f"{what} must be finite, not {value!r}")
    return float(value)


def _format_seconds(value: float) -> str:
    """Seconds as systemd reads them: ``2`` or, when not whole, milliseconds (``1500ms``)."""
    if value == int(value):
        return str(int(value))
    return f"{max(1, round(value * 1000))}ms"


def _plain_seconds(value: float) -> str:
    """Seconds as daemonkit's ``--timeout`` reads them: ``90``, ``1.5``."""
    return str(int(value)) if value == int(value) else repr(value)


def _umask(value: int | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise _fail(f"umask must be a number from 0o000 to 0o777, not {value!r}")
    return f"{value:03o}"


def _signal(value: str | int | None) -> str | None:
    """``"HUP"``, ``"SIGHUP"``, ``1``: the signal's short name; None for none."""
    if value is None:
        return None
    import signal  # here: only reload options need it

    try:
        if isinstance(value, bool):
            raise KeyError(value)
        if isinstance(value, int):
            number = signal.Signals(value)
        else:
            name = value.upper()
            number = signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    except (KeyError, ValueError):
        raise _fail(f"unknown signal {value!r} (a name such as HUP or USR1)") from None
    if number in (signal.SIGKILL, signal.SIGSTOP):
        raise _fail(f"{number.name} cannot be a reload signal: the program cannot handle it")
    return number.name.removeprefix("SIG")


def default_daemonkit() -> list[str]:
    """How the service will call the daemonkit command: an absolute path.

    The ``daemonkit`` script next to this interpreter (a virtualenv's), else
    the one on ``$PATH``, else ``python -m daemonkit`` with this interpreter.
    """
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "daemonkit")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return [beside]
    import shutil  # here: only this fallback needs it

    found = shutil.which("daemonkit")
    if found is not None:
        return [os.path.abspath(found)]
    return [os.path.abspath(sys.executable), "-m", "daemonkit"]


def _daemonkit(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return default_daemonkit()
    words = [value] if isinstance(value, str) else list(value)
    if not words or not all(isinstance(word, str) for word in words):
        raise _fail(f"daemonkit must be a path or a list of words, not {value!r}")
    for word in words:
        _check_text(word, "the daemonkit command")
    if not words[0].startswith("/"):
        raise _fail(
            f"the daemonkit command must start with an absolute path (services do not "
            f"search $PATH as a shell does), not {words[0]!r}"
        )
    return words


class _Options:
    """The settings :func:`systemd_unit` and :func:`sysv_script` share, checked."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        pidfile: str | os.PathLike[str] | None,
        user: str | int | None,
        group: str | int | None,
        description: str | None,
        working_directory: str | os.PathLike[str] | None,
        umask: int | None,
        chroot: str | os.PathLike[str] | None,
        stdout: str | os.PathLike[str] | None,
        stderr: str | os.PathLike[str] | None,
        environment: Mapping[str, str] | None,
        timeout: float | None,
        reload_signal: str | int | None,
        daemonkit: str | Sequence[str] | None,
    ) -> None:
        self.name = _unit_name(name)
        self.command = _command(command)
        self.pidfile = _absolute(pidfile, "pidfile")
        self.user = _owner(user, "user")
        self.group = _owner(group, "group")
        self.working_directory = _absolute(working_directory, "working_directory")
        self.umask = _umask(umask)
        self.chroot = _absolute(chroot, "chroot")
        self.stdout = _absolute(stdout, "stdout")
        self.stderr = _absolute(stderr, "stderr")
        self.environment = _environment(environment)
        self.timeout = _seconds(timeout, "timeout")
        if self.timeout == 0:
            raise _fail("timeout must be more than 0 seconds")
        self.reload_signal = _signal(reload_signal)
        self.daemonkit = _daemonkit(daemonkit)
        if description is None:
            description = f"{self.name} (run by daemonkit)"
        if not isinstance(description, str) or not description.strip():
            raise _fail(f"the description must be a non-empty string, not {description!r}")
        _check_text(description, "the description")
        if any(ord(character) < 0x20 or ord(character) == 0x7F for character in description):
            raise _fail(f"the description must be one line of text, not {description!r}")
        self.description = description.strip()

    def start_options(
        self, *, owner: bool, notify: bool, pidfile: bool = True, environment: bool = True
    ) -> list[list[str]]:
        """daemonkit ``start``/``run`` options for these settings: groups of
        (unquoted) words that belong together, such as ``["--pidfile", PATH]``.

        ``owner``: pass the user and group to daemonkit (else systemd sets
        them); ``pidfile``: include ``--pidfile`` (an init script says
        ``"$PIDFILE"`` instead); ``environment``: include ``--env`` (a unit
        has ``Environment=`` lines instead).
        """
        groups: list[list[str]] = []
        if self.pidfile and pidfile:
            groups.append(["--pidfile", self.pidfile])
        if notify:
            groups.append(["--notify"])
        for option, value in (
            ("--chdir", self.working_directory),
            ("--umask", self.umask),
            ("--chroot", self.chroot),
            ("--user", self.user if owner else None),
            ("--group", self.group if owner else None),
            ("--stdout", self.stdout),
            ("--stderr", self.stderr),
            ("--timeout", None if self.timeout is None else _plain_seconds(self.timeout)),
        ):
            if value is not None:
                groups.append([option, value])
        if environment:
            groups += [["--env", f"{key}={value}"] for key, value in self.environment]
        return groups

    def paths(self) -> list[str]:
        """Every absolute path the service touches (for the sandbox's exceptions)."""
        found: list[str] = []
        for word in [*self.daemonkit, *self.command]:
            for candidate in (word, word.partition("=")[2]):
                if candidate.startswith("/"):
                    found.append(candidate)
        for path in (
            self.pidfile,
            self.stdout,
            self.stderr,
            self.working_directory,
            self.chroot,
        ):
            if path:
                found.append(path)
        return found


def _under(path: str, trees: Iterable[str]) -> bool:
    return any(path == tree or path.startswith(tree + "/") for tree in trees)


def _run_relative(path: str) -> str | None:
    """The directory of ``path`` relative to /run (for ``RuntimeDirectory=``), or None."""
    folder = os.path.dirname(path)
    for root in ("/run/", "/var/run/"):
        if folder.startswith(root) and not _under(folder, _HOME_TREES):
            return folder[len(root) :]
    return None


def _log_relative(path: str) -> str | None:
    """The directory of ``path`` relative to /var/log (for ``LogsDirectory=``), or None."""
    folder = os.path.dirname(path)
    if folder.startswith("/var/log/"):
        return folder[len("/var/log/") :]
    return None


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


# --- SysV init ----------------------------------------------------------------


def sysv_script(
    name: str,
    command: Sequence[str],
    *,
    pidfile: str | os.PathLike[str] | None = None,
    user: str | int | None = None,
    group: str | int | None = None,
    description: str | None = None,
    working_directory: str | os.PathLike[str] | None = None,
    umask: int | None = None,
    chroot: str | os.PathLike[str] | None = None,
    stdout: str | os.PathLike[str] | None = None,
    stderr: str | os.PathLike[str] | None = None,
    environment: Mapping[str, str] | None = None,
    notify: bool = False,
    timeout: float | None = None,
    respawn: str | None = None,
    reload_signal: str | int | None = "HUP",
    daemonkit: str | Sequence[str] | None = None,
) -> str:
    """The text of an LSB init script (``/etc/init.d/NAME``) for ``command``.

    Its actions call the daemonkit command, whose exit codes are already
    the LSB ones: ``start`` (``daemonkit start``: returns once the program
    is up, or ready with ``notify``; 0 if it already runs, 1 with the reason
    if it failed), ``stop``, ``status`` (0 running, 1 dead with the pidfile
    left, 3 not running, 4 unknown), ``restart``, ``try-restart``,
    ``reload`` and ``force-reload`` (``daemonkit reload``: ``reload_signal``,
    default SIGHUP; with None, reload exits 3, unimplemented, and
    force-reload restarts). ``respawn`` (``"on-failure"`` or ``"always"``)
    keeps the program running under a daemonkit supervisor, since no
    service manager restarts it. ``pidfile`` defaults to
    ``/run/NAME.pid``; a pidfile directory under /run is created at start
    (/run is emptied at boot). The other options are ``daemonkit start``'s.
    """
    base = _unit_name(name)
    options = _Options(
        name,
        command,
        pidfile=pidfile if pidfile is not None else f"/run/{base}.pid",
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
    if "@" in options.name:
        raise _fail(f"{name!r}: an init script cannot be a template (no @ in its name)")
    if respawn not in (None, "no", "on-failure", "always"):
        raise _fail(f"respawn must be 'on-failure' or 'always' (or None), not {respawn!r}")
    pidfile_path = options.pidfile
    assert pidfile_path is not None
    groups = options.start_options(owner=True, notify=notify, pidfile=False)
    if respawn not in (None, "no"):
        groups.insert(0, ["--respawn", respawn])
    groups += _command_groups(options.command)
    launch = [[shell_quote(word) for word in group] for group in groups]
    description_text = options.description.replace("\n", " ")
    folder = os.path.dirname(pidfile_path)

    out = [
        "#!/bin/sh",
        "### BEGIN INIT INFO",
        f"# Provides:          {options.name}",
        "# Required-Start:    $remote_fs $syslog $network",
        "# Required-Stop:     $remote_fs $syslog $network",
        "# Default-Start:     2 3 4 5",
        "# Default-Stop:      0 1 6",
        f"# Short-Description: {description_text}",
        f"# Description:       {description_text}",
        "### END INIT INFO",
        "#",
        f"# /etc/init.d/{options.name}: generated by `daemonkit unit --sysv`. The daemonkit",
        "# command does the work and exits with the LSB codes: start returns once the",
        "# program is up (0; 0 too if it already runs) or says why it failed (1); stop",
        "# waits until it is gone; status exits 0 running, 1 dead but the pidfile",
        "# remains, 3 not running, 4 unknown.",
        "",
        f"PIDFILE={shell_quote(pidfile_path)}",
        "",
        "daemonkit() {",
        "\t" + " ".join(shell_quote(word) for word in options.daemonkit) + ' "$@"',
        "}",
        "",
        "# launch start|restart: daemonkit's start options, then the command.",
        "launch() {",
    ]
    if _run_relative(pidfile_path) is not None:
        quoted = shell_quote(folder)
        out.append(f"\t[ -d {quoted} ] || mkdir -p -m 0755 {quoted} || return 1")
    out.append(_wrap(launch, '\tdaemonkit "$1" --pidfile "$PIDFILE" ', "\t\t"))
    out += [
        "}",
        "",
        'case "$1" in',
        "start)",
        "\tlaunch start",
        "\t;;",
        "stop)",
        '\tdaemonkit stop --pidfile "$PIDFILE"',
        "\t;;",
        "status)",
        '\tdaemonkit status --pidfile "$PIDFILE"',
        "\t;;",
        "restart)",
        "\tlaunch restart",
        "\t;;",
        "try-restart | condrestart)",
        '\tif daemonkit status --pidfile "$PIDFILE" >/dev/null; then',
        "\t\tlaunch restart",
        "\tfi",
        "\t;;",
    ]
    if options.reload_signal is not None:
        signal_words = (
            "" if options.reload_signal == "HUP" else f" --signal {options.reload_signal}"
        )
        out += [
            "reload | force-reload)",
            f'\tdaemonkit reload --pidfile "$PIDFILE"{signal_words}',
            "\t;;",
        ]
    else:
        out += [
            "reload)",
            f'\techo "{options.name}: reload is not supported" >&2',
            "\texit 3",
            "\t;;",
            "force-reload)",
            '\tif daemonkit status --pidfile "$PIDFILE" >/dev/null; then',
            "\t\tlaunch restart",
            "\tfi",
            "\t;;",
        ]
    out += [
        "*)",
        '\techo "Usage: $0 {start|stop|status|restart|try-restart|reload|force-reload}" >&2',
        "\texit 2",
        "\t;;",
        "esac",
    ]
    return "\n".join(out) + "\n"


# --- the daemonkit unit subcommand --------------------------------------------


def _octal(text: str) -> int:
    import argparse

    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal umask such as 027") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"umask {text!r} is out of range (000 to 777)")
    return value


def _number(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def _pair(text: str) -> tuple[str, str]:
    import argparse

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--env {text!r}: expected KEY=VALUE")
    return key, value


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
    parser.add_argument("--umask", type=_octal, help="umask, octal (default 022)")
    parser.add_argument("--chroot", help="change root to this directory first")
    parser.add_argument("--stdout", help="append the program's stdout to this file")
    parser.add_argument("--stderr", help="append the program's stderr to this file")
    parser.add_argument(
        "--env", type=_pair, action="append", default=[], metavar="K=V", help="set a variable"
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


if __name__ == "__main__":
    raise SystemExit(main())
