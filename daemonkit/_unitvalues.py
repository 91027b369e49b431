"""Checking and quoting the values of a service definition, for :mod:`daemonkit.unit`.

Both generators (:func:`daemonkit.unit.systemd_unit` and
:func:`daemonkit.unit.sysv_script`) take the same settings and must refuse
the same mistakes with the same messages, and both write command lines a
parser reads back word for word (systemd's, or a POSIX shell's). That
shared part lives here, apart from the text of either file: the checks
(each raising :class:`~daemonkit.ConfigurationError`, a ``ValueError``),
the quoting rules (:func:`systemd_quote`, :func:`shell_quote`), the layout
of long command lines, and :class:`_Options`, the checked settings.

Nothing here is imported by the ``daemonkit`` command until ``daemonkit
unit`` runs (:mod:`daemonkit._unitcli` loads it inside ``run()``).
"""

from __future__ import annotations

import os
import re
import sys

from ._lazy import errors

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from .errors import ConfigurationError

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

# Home directories: a pidfile there is not under a RuntimeDirectory=, and
# a service using files there gets ProtectHome=read-only (daemonkit.unit).
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
    """The program and its arguments as a list, checked (a list of words, not a string)."""
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
    """A user or group (name or number) as text, checked; None for none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _fail(f"the {what} must be a name or a number, not {value!r}")
    text = str(value)
    if not re.fullmatch(_USER_NAME, text) or text.startswith("-"):
        raise _fail(f"{what} {text!r} is not a valid {what} name or number")
    return text


def _environment(environment: Mapping[str, str] | None) -> list[tuple[str, str]]:
    """The variables as (name, value) pairs, in order, checked."""
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
    """A finite number of seconds >= 0 as a float; None for none."""
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
    """A umask as daemonkit's ``--umask`` reads it (``027``); None for none."""
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
    """The words that call the daemonkit command (default: :func:`default_daemonkit`)."""
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


# --- the settings both generators take -------------------------------------


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
    """Whether ``path`` is one of ``trees`` or inside one."""
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
