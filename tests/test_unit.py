"""``daemonkit.unit``: systemd units and SysV init scripts for the daemonkit command.

A unit is text that systemd parses; the tests parse it the way systemd does
(sections, ``KEY=VALUE``, continuation lines, and for command lines the
quoting of systemd.syntax(7) with ``%%`` and ``$$``), written here from the
manual pages, not from the generator, and compare what comes out with what
went in. When ``systemd-analyze`` is installed it checks the same files
(``verify``: no unknown key, no bad escape; ``security --offline``: the
sandbox lowers the exposure score). Then the command lines are run: the
``ExecStart=`` of a ``Type=notify`` unit, executed as systemd would
(its environment, a ``$NOTIFY_SOCKET``), must give READY=1 from the very
process systemd started (the program exec'd in its place), and a
``Type=forking`` one must return once the program is ready with its pid in
``PIDFile=``. SysV scripts are checked by ``sh -n`` and run for real:
start, status, reload, restart, stop, with LSB exit codes. Every process is
cleaned up by pid (the ``daemons`` fixture).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemons, clean_env, is_alive, wait_gone, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daemonkit
from daemonkit.unit import (
    HARDENING,
    RESTART_POLICIES,
    add_arguments,
    run,
    shell_quote,
    systemd_quote,
    systemd_unit,
    sysv_script,
)

pytestmark = pytest.mark.timeout(60)

DAEMONKIT = [sys.executable, "-m", "daemonkit"]
INSTALLED = "/usr/local/bin/daemonkit"  # where a system-wide install puts it
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
WHITESPACE = " \t\n\r"

# Every directive the generator may write, by section (each is listed in
# systemd.directives(7); test_every_key_is_a_real_systemd_directive checks).
KNOWN_KEYS = {
    "Unit": {"Description", "After"},
    "Service": {
        "Type",
        "ExecStart",
        "ExecReload",
        "PIDFile",
        "User",
        "Group",
        "Environment",
        "WorkingDirectory",
        "RuntimeDirectory",
        "LogsDirectory",
        "SyslogIdentifier",
        "Restart",
        "RestartSec",
        "RestartPreventExitStatus",
        "KillMode",
        "TimeoutStartSec",
        "WatchdogSec",
        "ReadWritePaths",
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "RestrictNamespaces",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
        "RestrictAddressFamilies",
        "SystemCallArchitectures",
        "SystemCallFilter",
        "SystemCallErrorNumber",
    },
    "Install": {"WantedBy"},
}

# --- a reader for unit files, after systemd.syntax(7) and systemd.service(5) --

ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
    "'": "'",
    "s": " ",
}


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file, each a list of (key, value) in order.

    Comments (``#``, ``;``) and empty lines are skipped; a line ending in a
    backslash is joined to the next with a space; whitespace around ``=``
    is dropped. Anything else (a key outside a section, a line without
    ``=``, a malformed section header) fails the test.
    """
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    lines = iter(text.split("\n"))
    for raw in lines:
        line = raw
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines)
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        header = re.fullmatch(r"\[([A-Za-z]+)\]", stripped)
        if header:
            assert header.group(1) not in sections, f"section [{header.group(1)}] twice"
            current = sections.setdefault(header.group(1), [])
            continue
        assert current is not None, f"a line outside any section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key.strip()), f"bad key in {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [value for name, value in unit.get(section, []) if name == key]


def single(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"{key}= in [{section}]: {found}"
    return found[0]


def unescape(text: str, at: int) -> tuple[str, int]:
    """The character a C-style escape at ``text[at]`` (a backslash) stands for,
    and the index after it; unknown escapes fail, as systemd warns of them."""
    letter = text[at + 1 : at + 2]
    if letter in ESCAPES:
        return ESCAPES[letter], at + 2
    for prefix, digits, base in (("x", 2, 16), ("u", 4, 16), ("U", 8, 16)):
        if letter == prefix:
            code = text[at + 2 : at + 2 + digits]
            assert len(code) == digits and all(c in "0123456789abcdefABCDEF" for c in code), (
                f"bad \\{prefix} escape in {text!r}"
            )
            return chr(int(code, base)), at + 2 + digits
    code = text[at + 1 : at + 4]
    assert re.fullmatch(r"[0-7]{3}", code), f"unknown escape in {text!r} at {at}"
    return chr(int(code, 8)), at + 4


def specifiers(word: str) -> str:
    """``%%`` is ``%``; any other specifier would be expanded: fail."""
    out, at = [], 0
    while at < len(word):
        if word[at] == "%":
            assert word[at + 1 : at + 2] == "%", f"a live specifier in {word!r}"
            at += 1
        out.append(word[at])
        at += 1
    return "".join(out)


def variables(word: str) -> str:
    """``$$`` is ``$``; any other ``$`` could be a variable: fail."""
    out, at = [], 0
    while at < len(word):
        if word[at] == "$":
            assert word[at + 1 : at + 2] == "$", f"a live variable in {word!r}"
            at += 1
        out.append(word[at])
        at += 1
    return "".join(out)


def split_words(value: str, *, command: bool = True) -> list[str]:
    """The items of a value, unquoted as systemd.syntax(7) says.

    Quotes wrap whole items (an opening quote only at the start of an item,
    the closing one followed by whitespace or the end), backslash escapes
    apply inside and outside quotes. For a command line (``command``), a
    lone ``;`` would separate commands (fail), ``\\;`` is a ``;`` word, and
    variables are expanded after specifiers.
    """
    words: list[str] = []
    at, end = 0, len(value)
    while True:
        while at < end and value[at] in WHITESPACE:
            at += 1
        if at >= end:
            break
        lone = at + 1 == end or value[at + 1] in WHITESPACE
        if command and value[at] == ";" and lone:
            pytest.fail(f"an unquoted ';' separates commands in {value!r}")
        if (
            command
            and value.startswith("\\;", at)
            and (at + 2 == end or value[at + 2] in WHITESPACE)
        ):
            words.append(";")
            at += 2
            continue
        chars: list[str] = []
        if value[at] in "\"'":
            quote = value[at]
            at += 1
            while True:
                assert at < end, f"unterminated quote in {value!r}"
                if value[at] == quote:
                    at += 1
                    break
                if value[at] == "\\":
                    char, at = unescape(value, at)
                else:
                    char, at = value[at], at + 1
                chars.append(char)
            assert at == end or value[at] in WHITESPACE, f"text after a quote in {value!r}"
        else:
            while at < end and value[at] not in WHITESPACE:
                assert value[at] not in "\"'", f"a quote inside a bare word in {value!r}"
                if value[at] == "\\":
                    char, at = unescape(value, at)
                else:
                    char, at = value[at], at + 1
                chars.append(char)
        word = specifiers("".join(chars))
        words.append(variables(word) if command else word)
    return words


def exec_argv(text: str, key: str = "ExecStart") -> list[str]:
    """The argv systemd would run for ``key`` of the unit ``text``."""
    return split_words(single(parse_unit(text), "Service", key))


def unit_environment(text: str) -> dict[str, str]:
    """The variables of the unit's ``Environment=`` lines."""
    found: dict[str, str] = {}
    for value in values(parse_unit(text), "Service", "Environment"):
        for item in split_words(value, command=False):
            key, sep, content = item.partition("=")
            assert sep, f"not K=V: {item!r}"
            found[key] = content
    return found


# --- structure ------------------------------------------------------------------

VARIANTS = {
    "notify": {"notify": True},
    "exec": {},
    "notify-pidfile-user": {"notify": True, "pidfile": "/run/svc/svc.pid", "user": "daemon"},
    "forking": {"forking": True, "notify": True, "pidfile": "/run/svc/svc.pid", "timeout": 20},
    "logs-env-chdir": {
        "stdout": "/var/log/svc/out.log",
        "stderr": "/var/log/svc/err.log",
        "environment": {"MODE": "a b", "RATE": "50%"},
        "working_directory": "/srv/svc",
        "umask": 0o027,
    },
    "chroot": {"chroot": "/srv/jail", "user": "daemon", "group": "daemon"},
    "watchdog": {"notify": True, "watchdog_sec": 30, "restart": "always", "restart_sec": 0.5},
    "bare": {"hardening": False, "reload_signal": None, "wanted_by": None},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_unit_has_its_sections_and_only_known_keys(variant: str) -> None:
    """Each variant parses as a unit file: [Unit], [Service], ([Install]), no key
    twice that systemd takes once, and every key one systemd knows."""
    text = systemd_unit("svc", ["/usr/bin/sleep", "300"], daemonkit=DAEMONKIT, **VARIANTS[variant])
    unit = parse_unit(text)
    expected = {"Unit", "Service"} | (set() if variant == "bare" else {"Install"})
    assert set(unit) == expected
    for section, entries in unit.items():
        keys = [key for key, _ in entries]
        unknown = set(keys) - KNOWN_KEYS[section]
        assert not unknown, f"unknown keys in [{section}]: {unknown}"
        repeatable = {"Environment", "LogsDirectory"}
        twice = {key for key in keys if keys.count(key) > 1} - repeatable
        assert not twice, f"given twice in [{section}]: {twice}"
    assert single(unit, "Service", "ExecStart")
    assert single(unit, "Unit", "Description") == "svc (run by daemonkit)"


def test_notify_unit_runs_the_program_in_place_of_daemonkit_run() -> None:
    """Type=notify: ExecStart is ``daemonkit run`` (which execs, so the program is
    the main process and its READY=1 reaches systemd), never ``start`` or
    ``--respawn`` (systemd restarts), never ``--notify`` (a no-op for run)."""
    text = systemd_unit("echo", ["/usr/bin/python3", "/srv/echo.py", "--port", "8007"], notify=True)
    unit = parse_unit(text)
    assert single(unit, "Service", "Type") == "notify"
    argv = exec_argv(text)
    assert argv[argv.index("run") + 1 :] == [
        "--",
        "/usr/bin/python3",
        "/srv/echo.py",
        "--port",
        "8007",
    ]
    assert "start" not in argv and "--respawn" not in argv and "--notify" not in argv
    assert argv[0] == daemonkit.unit.default_daemonkit()[0] and argv[0].startswith("/")
    assert single(unit, "Service", "Restart") == "on-failure"
    assert single(unit, "Service", "RestartSec") == "2"
    assert single(unit, "Service", "KillMode") == "mixed"
    assert single(unit, "Service", "RestartPreventExitStatus") == "5 6"
    assert single(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert single(unit, "Install", "WantedBy") == "multi-user.target"


def test_without_notify_the_unit_is_type_exec() -> None:
    """A program that does not notify must not be Type=notify (systemd would wait
    for READY=1 until the start timeout and kill it): Type=exec."""
    unit = parse_unit(systemd_unit("plain", ["/usr/bin/sleep", "300"]))
    assert single(unit, "Service", "Type") == "exec"


def test_forking_unit_uses_daemonkit_start_and_the_pidfile() -> None:
    """Type=forking: ``daemonkit start --pidfile P --notify`` (the launcher returns
    once the program is ready), PIDFile=P, the pidfile's /run directory made by
    systemd, reload through daemonkit (which signals the lock holder only), and a
    start timeout longer than daemonkit's own so its reason is not cut off."""
    text = systemd_unit(
        "svc",
        ["/usr/bin/sleep", "300"],
        forking=True,
        notify=True,
        pidfile="/run/svc/svc.pid",
        timeout=20,
        daemonkit="/usr/local/bin/daemonkit",
    )
    unit = parse_unit(text)
    assert single(unit, "Service", "Type") == "forking"
    assert single(unit, "Service", "PIDFile") == "/run/svc/svc.pid"
    assert single(unit, "Service", "RuntimeDirectory") == "svc"
    assert exec_argv(text) == [
        "/usr/local/bin/daemonkit",
        "start",
        "--pidfile",
        "/run/svc/svc.pid",
        "--notify",
        "--timeout",
        "20",
        "--",
        "/usr/bin/sleep",
        "300",
    ]
    assert exec_argv(text, "ExecReload") == [
        "/usr/local/bin/daemonkit",
        "reload",
        "--pidfile",
        "/run/svc/svc.pid",
    ]
    assert single(unit, "Service", "TimeoutStartSec") == "30"


def test_user_goes_to_systemd_except_with_a_chroot() -> None:
    """User=/Group= are systemd's (the whole service runs unprivileged, the
    RuntimeDirectory is made for that user); with a chroot, which needs root,
    daemonkit changes root first and drops privileges itself (--user/--group),
    and the system call filter lets chroot(2) through."""
    plain = systemd_unit("svc", ["/bin/true"], user="daemon", group="daemon", pidfile="/run/svc/p")
    unit = parse_unit(plain)
    assert single(unit, "Service", "User") == "daemon"
    assert single(unit, "Service", "Group") == "daemon"
    assert "--user" not in exec_argv(plain)
    jailed = systemd_unit("svc", ["/bin/true"], user="daemon", group="daemon", chroot="/srv/j")
    unit = parse_unit(jailed)
    assert values(unit, "Service", "User") == [] and values(unit, "Service", "Group") == []
    argv = exec_argv(jailed)
    assert argv[argv.index("--chroot") + 1] == "/srv/j"
    assert argv[argv.index("--user") + 1] == "daemon"
    assert argv[argv.index("--group") + 1] == "daemon"
    assert single(unit, "Service", "SystemCallFilter") == "@system-service chroot"


def test_sandbox_options_and_their_exceptions() -> None:
    """Hardening is on by default; files the service writes are listed in
    ReadWritePaths= (or become RuntimeDirectory=/LogsDirectory=); a command or
    file under /tmp drops PrivateTmp= (the service would not find it), one in a
    home directory makes ProtectHome= read-only; hardening=False adds none."""
    text = systemd_unit(
        "svc",
        ["/usr/bin/worker", "--spool=/var/spool/svc"],
        pidfile="/srv/state/svc.pid",
        stdout="/var/log/svc/out.log",
        stderr="/srv/logs/err.log",
        writable_paths=["/var/spool/svc"],
        daemonkit=INSTALLED,
    )
    unit = parse_unit(text)
    for key, value in HARDENING:
        assert single(unit, "Service", key) == value
    assert single(unit, "Service", "LogsDirectory") == "svc"
    assert single(unit, "Service", "ReadWritePaths") == "/srv/state /srv/logs /var/spool/svc"

    in_tmp = parse_unit(systemd_unit("svc", ["/tmp/venv/bin/worker"], daemonkit=INSTALLED))
    assert values(in_tmp, "Service", "PrivateTmp") == []
    at_home = parse_unit(
        systemd_unit("svc", ["/usr/bin/w", "--config=/root/w.conf"], daemonkit=INSTALLED)
    )
    assert single(at_home, "Service", "ProtectHome") == "read-only"
    bare = parse_unit(systemd_unit("svc", ["/bin/true"], hardening=False))
    assert not {key for key, _ in HARDENING} & {key for key, _ in bare["Service"]}


def test_environment_goes_into_environment_lines_only() -> None:
    """Variables are Environment= lines (shown by systemctl show), quoted so that
    spaces, quotes and %% survive, and not repeated as --env on ExecStart."""
    environment = {"MODE": "a b", "RATE": "50%", "QUOTE": 'say "hi"', "EMPTY": ""}
    text = systemd_unit("svc", ["/bin/true"], environment=environment)
    assert unit_environment(text) == environment
    assert "--env" not in exec_argv(text)


# --- quoting --------------------------------------------------------------------

NASTY = [
    "plain",
    "",
    "two words",
    "tab\there",
    "new\nline",
    'double"quote',
    "single'quote",
    "back\\slash",
    "trailing\\",
    "$HOME",
    "${HOME}",
    "$$",
    "%n",
    "%%",
    "100%",
    ";",
    "\\;",
    "a;b",
    "-",
    "--flag=value with space",
    "é ünïcødé ✓",
    "\x01\x1f\x7f",
    "\u0085 next line",
    "'",
    '"',
    "#not a comment",
    "trailing space ",
    " leading",
]


def test_nasty_words_round_trip_through_a_command_line() -> None:
    """Each word, quoted, comes back unchanged from systemd's rules (specifiers and
    variables included), alone and in a line with the others."""
    for word in NASTY:
        assert split_words(systemd_quote(word)) == [word], word
    line = " ".join(systemd_quote(word) for word in NASTY)
    assert split_words(line) == NASTY


def test_plain_words_stay_bare() -> None:
    """Ordinary words are not quoted (the unit stays readable); % and $ are doubled."""
    assert systemd_quote("/usr/bin/python3") == "/usr/bin/python3"
    assert systemd_quote("--port=8007") == "--port=8007"
    assert systemd_quote("50%") == "50%%"
    assert systemd_quote("$HOME") == "$$HOME"
    assert systemd_quote("$HOME", dollar=False) == "$HOME"
    assert systemd_quote("a b") == '"a b"'


words_strategy = st.lists(
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"), max_size=12),
    min_size=1,
    max_size=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(words=words_strategy)
def test_any_command_round_trips_through_the_whole_unit(words: list[str]) -> None:
    """For any arguments (any text but NUL), the unit's ExecStart, read back with
    continuation lines and systemd's unquoting, is exactly daemonkit run -- CMD."""
    command = ["/usr/bin/program", *words]
    text = systemd_unit("svc", command, daemonkit="/usr/local/bin/daemonkit", pidfile="/run/p/p")
    assert exec_argv(text) == [
        "/usr/local/bin/daemonkit",
        "run",
        "--pidfile",
        "/run/p/p",
        "--",
        *command,
    ]


def test_long_command_lines_are_wrapped_between_words() -> None:
    """A long ExecStart is continued over lines of at most 100 columns, each
    ending in a backslash, breaking only between options (never inside
    ``--port 8007``), and it still reads back as the same argv."""
    command = ["/usr/bin/program", *[f"--option-{index} value-{index}" for index in range(12)]]
    command += ["--port", "8007"]
    text = systemd_unit("svc", command, daemonkit="/usr/local/bin/daemonkit")
    lines = text.split("\n")
    start = next(index for index, line in enumerate(lines) if line.startswith("ExecStart="))
    block = [lines[start]]
    while block[-1].endswith(" \\"):
        block.append(lines[start + len(block)])
    assert len(block) > 2
    assert all(len(line) <= 100 for line in block)
    assert any(line.endswith("--port 8007") or " --port 8007 " in line for line in block)
    assert exec_argv(text)[-len(command) :] == command


@settings(max_examples=200, deadline=None)
@given(value=st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0")))
def test_any_environment_value_round_trips(value: str) -> None:
    """Environment= values come back exactly (specifiers escaped, $ left alone:
    systemd does not expand variables there)."""
    text = systemd_unit("svc", ["/bin/true"], environment={"VALUE": value})
    assert unit_environment(text) == {"VALUE": value}


@settings(max_examples=200, deadline=None)
@given(words=words_strategy)
def test_any_command_round_trips_through_a_shell(words: list[str]) -> None:
    """shell_quote gives sh the same words back (checked by a real sh)."""
    line = " ".join(shell_quote(word) for word in words)
    result = subprocess.run(
        ["sh", "-c", f"for w in {line}; do printf '%s\\0' \"$w\"; done"],
        capture_output=True,
        timeout=10,
    )
    assert result.returncode == 0
    assert result.stdout.decode().split("\0")[:-1] == words


# --- validation -----------------------------------------------------------------

BAD = [
    ({"name": "two words"}, "unit name"),
    ({"name": ""}, "unit name"),
    ({"name": "a/b"}, "unit name"),
    ({"name": "-dash"}, "unit name"),
    ({"name": "x" * 250}, "too long"),
    ({"command": []}, "no command"),
    ({"command": "/usr/bin/sleep 300"}, "list of words"),
    ({"command": ["", "x"]}, "first word"),
    ({"command": ["/bin/echo", "nul\0byte"]}, "NUL"),
    ({"command": ["/bin/echo", "\udcff"]}, "UTF-8"),
    ({"pidfile": "relative.pid"}, "absolute"),
    ({"pidfile": "/run/with space/x.pid"}, "plain path"),
    ({"stdout": "log.txt"}, "absolute"),
    ({"forking": True}, "needs a pidfile"),
    ({"restart": "sometimes"}, "restart must be one of"),
    ({"restart_sec": -1}, "restart_sec"),
    ({"timeout": 0}, "more than 0"),
    ({"watchdog_sec": 10}, "watchdog_sec needs notify"),
    ({"user": "bad user"}, "user"),
    ({"user": True}, "user"),
    ({"environment": {"1BAD": "x"}}, "environment variable name"),
    ({"environment": {"OK": 1}}, "must be a string"),
    ({"umask": 0o1000}, "umask"),
    ({"reload_signal": "NOPE"}, "unknown signal"),
    ({"reload_signal": "KILL"}, "cannot be a reload signal"),
    ({"description": "two\nlines"}, "one line"),
    ({"daemonkit": "daemonkit"}, "absolute path"),
    ({"after": ["not a unit"]}, "not a unit name"),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[message for _, message in BAD])
def test_bad_settings_are_refused_with_a_clear_message(
    change: dict[str, object], message: str
) -> None:
    """Bad input is a ConfigurationError (a ValueError) that names the problem,
    never a unit systemd would refuse or misread."""
    arguments: dict[str, object] = {"name": "svc", "command": ["/bin/true"], **change}
    name, command = arguments.pop("name"), arguments.pop("command")
    with pytest.raises(daemonkit.ConfigurationError, match=re.escape(message)) as caught:
        systemd_unit(name, command, **arguments)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)


def test_sysv_specific_settings_are_refused() -> None:
    """An init script cannot be a template, and respawn takes only real policies."""
    with pytest.raises(daemonkit.ConfigurationError, match="template"):
        sysv_script("svc@", ["/bin/true"])
    with pytest.raises(daemonkit.ConfigurationError, match="respawn"):
        sysv_script("svc", ["/bin/true"], respawn="sometimes")


# --- systemd's own tools ----------------------------------------------------------


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    if SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze is not installed")
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_systemd_analyze_verify_accepts_the_unit(variant: str, tmp_path: Path) -> None:
    """systemd's own parser loads each variant, with every nasty argument,
    without a warning about the file (no unknown key, no bad escape, no
    unbalanced quote, the executable exists)."""
    settings_ = dict(VARIANTS[variant])
    command = ["/bin/sh", "-c", 'echo "$1 100% $$HOME" \\ ;', "sh", *NASTY]
    path = tmp_path / "svc.service"
    path.write_text(systemd_unit("svc", command, daemonkit=DAEMONKIT, **settings_))
    result = analyze("verify", "--man=no", str(path))
    complaints = [line for line in result.stderr.splitlines() if "svc.service" in line]
    assert result.returncode == 0 and not complaints, result.stderr


def test_systemd_analyze_finds_the_program_behind_a_quoted_path(tmp_path: Path) -> None:
    """systemd's own unquoting of ExecStart's first word gives exactly our path:
    verify finds the executable in a directory named with spaces and %. Paths
    systemd refuses to run (quotes, backslashes: "special characters"; '$',
    which it would not expand there) are refused, not written wrong."""
    folder = tmp_path / "dir with space %n 100%"
    folder.mkdir()
    program = folder / "daemonkit"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    path = tmp_path / "svc.service"
    path.write_text(systemd_unit("svc", ["/bin/true"], daemonkit=str(program)))
    assert exec_argv(path.read_text())[0] == str(program)
    result = analyze("verify", "--man=no", str(path))
    assert result.returncode == 0 and "svc.service" not in result.stderr, result.stderr
    missing = tmp_path / "other.service"
    missing.write_text(systemd_unit("other", ["/bin/true"], daemonkit=str(folder / "nothing")))
    result = analyze("verify", "--man=no", str(missing))
    assert result.returncode != 0 and "is not executable" in result.stderr  # the check is live
    for bad in ("/opt/a$b/daemonkit", "/opt/it's/daemonkit", '/opt/"q"/dk', "/opt/a\\b/dk"):
        with pytest.raises(daemonkit.ConfigurationError, match="systemd cannot run"):
            systemd_unit("svc", ["/bin/true"], daemonkit=bad)


def test_systemd_analyze_security_scores_the_sandbox(tmp_path: Path) -> None:
    """``systemd-analyze security`` rates the hardened unit far better than the
    same unit without the sandbox, and at most MEDIUM exposure."""

    def exposure(hardening: bool) -> float:
        path = tmp_path / f"svc{int(hardening)}.service"
        path.write_text(
            systemd_unit(
                "svc", ["/bin/true"], user="daemon", daemonkit=DAEMONKIT, hardening=hardening
            )
        )
        result = analyze("security", "--offline=yes", "--no-pager", str(path))
        found = re.search(
            r"Overall exposure level for \S+: ([0-9.]+)", result.stdout + result.stderr
        )
        if found is None:
            pytest.skip(f"systemd-analyze security --offline is not supported: {result.stderr}")
        return float(found.group(1))

    hardened, open_ = exposure(True), exposure(False)
    assert hardened <= 5.0, hardened
    assert open_ - hardened >= 3.0, (hardened, open_)


def test_every_key_is_a_real_systemd_directive() -> None:
    """Each key the generator may write is in systemd.directives(7), the index of
    all of systemd's settings (so no invented option slips in)."""
    page = Path("/usr/share/man/man7/systemd.directives.7.gz")
    if not page.exists():
        pytest.skip("systemd.directives(7) is not installed")
    text = gzip.decompress(page.read_bytes()).decode("utf-8", "replace")
    documented = set(re.findall(r"\\fI([A-Za-z]+)=\\fR", text))
    ours = set().union(*KNOWN_KEYS.values())
    assert ours - documented == set()
    written = {key for key, _ in HARDENING}
    assert written <= KNOWN_KEYS["Service"]
    assert set(RESTART_POLICIES) == {
        "no",
        "on-success",
        "on-failure",
        "on-abnormal",
        "on-watchdog",
        "on-abort",
        "always",
    }


# --- the command lines, run as systemd would run them ---------------------------

# argv: OUT. Records its argv, environment and pid; READY=1 through daemonkit.ready();
# SIGHUP is counted in OUT.hup; SIGTERM ends it.
PROGRAM = """\
import json, os, signal, sys, time
import daemonkit
out = sys.argv[1]
def on_hup(signum, frame):
    with open(out + ".hup", "a") as log:
        log.write("HUP\\n")
signal.signal(signal.SIGHUP, on_hup)
with open(out + ".tmp", "w") as report:
    json.dump({"argv": sys.argv, "pid": os.getpid(), "cwd": os.getcwd(),
               "umask": os.umask(0o022), "env": dict(os.environ)}, report)
os.rename(out + ".tmp", out)
daemonkit.ready("serving")
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    time.sleep(0.05)
"""


class NotifySocket:
    """A service manager's $NOTIFY_SOCKET: receives datagrams with the sender's pid."""

    def __init__(self) -> None:
        self.name = f"dk-unit-test/{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + self.name)
        self.sock.settimeout(20)

    @property
    def address(self) -> str:
        return "@" + self.name

    def receive(self) -> tuple[str, int]:
        """One message and the pid of the process that sent it."""
        size = struct.calcsize("3i")
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(size))
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", payload[:size])[0]
        return data.decode(), pid

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    receiver = NotifySocket()
    try:
        yield receiver
    finally:
        receiver.close()


def read_report(path: Path) -> dict[str, object]:
    assert wait_until(path.exists, 20), f"the program did not start: no {path}"
    data: dict[str, object] = json.loads(path.read_text())
    return data


def test_notify_unit_exec_start_gives_ready_from_the_main_process(
    daemons: Daemons, tmp_path: Path, notify_socket: NotifySocket
) -> None:
    """Run the unit's ExecStart as systemd would (Environment= applied, a
    $NOTIFY_SOCKET given): the program gets exactly its arguments, runs as the
    very process systemd started (MainPID: daemonkit run exec'd it), and its
    READY=1 comes from that pid, so Type=notify with NotifyAccess=main works.
    The pidfile names it too, ExecReload reaches it, and SIGTERM (systemctl
    stop) ends it."""
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    out = tmp_path / "report.json"
    pidfile = tmp_path / "run" / "svc.pid"
    pidfile.parent.mkdir()
    workdir = tmp_path / "work"
    workdir.mkdir()
    arguments = ["two words", "$HOME", "100%", ";", 'q"uote', "back\\slash"]
    text = systemd_unit(
        "svc",
        [sys.executable, str(script), str(out), *arguments],
        notify=True,
        pidfile=pidfile,
        working_directory=workdir,
        umask=0o027,
        environment={"GREETING": "hello $USER 100%"},
        daemonkit=DAEMONKIT,
    )
    env = clean_env(NOTIFY_SOCKET=notify_socket.address, **unit_environment(text))
    main = subprocess.Popen(exec_argv(text), env=env, stdin=subprocess.DEVNULL, cwd="/")
    daemons.track(main.pid)
    report = read_report(out)
    assert report["argv"] == [str(script), str(out), *arguments]
    assert report["pid"] == main.pid
    assert report["cwd"] == str(workdir)
    assert report["umask"] == 0o027
    assert report["env"]["GREETING"] == "hello $USER 100%"  # type: ignore[index]
    message, sender = notify_socket.receive()
    assert "READY=1" in message.split("\n") and "STATUS=serving" in message.split("\n")
    assert sender == main.pid
    assert int(pidfile.read_text()) == main.pid

    reload = subprocess.run(exec_argv(text, "ExecReload"), capture_output=True, timeout=30)
    assert reload.returncode == 0, reload.stderr
    assert wait_until(lambda: Path(f"{out}.hup").exists(), 10)

    main.send_signal(signal.SIGTERM)
    assert main.wait(timeout=20) == -signal.SIGTERM
    assert not is_alive(main.pid)


def test_exec_unit_without_pidfile_reloads_by_main_pid(daemons: Daemons, tmp_path: Path) -> None:
    """Type=exec without a pidfile: ExecReload is kill -HUP $MAINPID, which,
    with systemd's MAINPID filled in, reaches the program (the main process)."""
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    out = tmp_path / "report.json"
    text = systemd_unit("svc", [sys.executable, str(script), str(out)], daemonkit=DAEMONKIT)
    main = subprocess.Popen(exec_argv(text), env=clean_env(), stdin=subprocess.DEVNULL)
    daemons.track(main.pid)
    assert read_report(out)["pid"] == main.pid
    reload = single(parse_unit(text), "Service", "ExecReload").replace("$MAINPID", str(main.pid))
    result = subprocess.run(split_words(reload), capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert wait_until(lambda: Path(f"{out}.hup").exists(), 10)
    main.send_signal(signal.SIGTERM)
    main.wait(timeout=20)


def test_forking_unit_exec_start_returns_when_ready_with_the_pid_in_pidfile(
    daemons: Daemons, tmp_path: Path
) -> None:
    """Run a Type=forking unit's ExecStart: it exits 0 only once the program is
    ready (its report exists by then), PIDFile= names the program (which is
    detached), daemonkit status agrees, and SIGTERM to that pid stops it."""
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    out = tmp_path / "report.json"
    pidfile = tmp_path / "svc.pid"
    text = systemd_unit(
        "svc",
        [sys.executable, str(script), str(out), "x y"],
        forking=True,
        notify=True,
        pidfile=pidfile,
        timeout=20,
        daemonkit=DAEMONKIT,
    )
    launched = daemons.run(exec_argv(text), env=clean_env(), timeout=40)
    assert launched.returncode == 0, launched.stderr
    assert out.exists()  # ready came after the report: the launcher waited for it
    assert single(parse_unit(text), "Service", "PIDFile") == str(pidfile)
    pid = int(pidfile.read_text())
    daemons.track(pid)
    report = read_report(out)
    assert report["pid"] == pid and report["argv"][-1] == "x y"  # type: ignore[index]
    status = subprocess.run(
        [*DAEMONKIT, "status", "--pidfile", str(pidfile)], capture_output=True, timeout=30
    )
    assert status.returncode == 0
    os.kill(pid, signal.SIGTERM)
    assert wait_gone(pid, 20)


def test_forking_unit_exec_start_fails_when_the_program_fails(
    daemons: Daemons, tmp_path: Path
) -> None:
    """A program that dies before READY=1 makes ExecStart exit 1 and say so:
    systemd marks the start failed at once, instead of waiting for a timeout."""
    pidfile = tmp_path / "svc.pid"
    text = systemd_unit(
        "svc",
        [sys.executable, "-c", "raise SystemExit('cannot bind port 1: permission denied')"],
        forking=True,
        notify=True,
        pidfile=pidfile,
        timeout=20,
        daemonkit=DAEMONKIT,
    )
    launched = daemons.run(exec_argv(text), env=clean_env(), timeout=40)
    assert launched.returncode == 1
    assert "exited with status 1" in launched.stderr, launched.stderr


# --- the command: python -m daemonkit.unit (``daemonkit unit`` once wired) ------


def unit_command(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemonkit.unit", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
    )


def test_command_prints_the_same_unit_as_the_function() -> None:
    """Options before and after NAME are all taken (argparse alone would not),
    the command after -- is kept word for word, and the output is exactly what
    systemd_unit() gives for the same settings."""
    result = unit_command(
        "--notify",
        "echo",
        "--pidfile",
        "/run/echo/echo.pid",
        "--user",
        "daemon",
        "--env",
        "A=b c",
        "--env",
        "B=2",
        "--daemonkit",
        "/usr/local/bin/daemonkit",
        "--",
        "/usr/bin/python3",
        "/srv/echo.py",
        "--notify",
        "--",
        "x",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == systemd_unit(
        "echo",
        ["/usr/bin/python3", "/srv/echo.py", "--notify", "--", "x"],
        notify=True,
        pidfile="/run/echo/echo.pid",
        user="daemon",
        environment={"A": "b c", "B": "2"},
        daemonkit="/usr/local/bin/daemonkit",
    )


def test_command_sysv_output_and_output_file(tmp_path: Path) -> None:
    """--sysv prints the init script; -o writes it whole with mode 0755 (0644 for
    a unit) and says so on stderr."""
    target = tmp_path / "svc"
    result = unit_command(
        "svc",
        "--sysv",
        "--respawn",
        "--pidfile",
        "/run/svc.pid",
        "-o",
        str(target),
        "--",
        "/bin/sleep",
        "300",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and str(target) in result.stderr
    assert target.stat().st_mode & 0o777 == 0o755
    expected = sysv_script(
        "svc", ["/bin/sleep", "300"], pidfile="/run/svc.pid", respawn="on-failure"
    )
    assert target.read_text() == expected
    unit = tmp_path / "svc.service"
    assert unit_command("svc", "-o", str(unit), "--", "/bin/true").returncode == 0
    assert unit.stat().st_mode & 0o777 == 0o644
    assert sorted(tmp_path.iterdir()) == sorted([target, unit])  # no temporary file left


def test_subcommand_wiring_as_cli_py_does_it(capsys: pytest.CaptureFixture[str]) -> None:
    """``add_arguments`` on a ``unit`` subparser of a parser with other
    subcommands, then ``run(args)``: options on both sides of NAME are taken,
    the command's own options after ``--`` are left alone, and the unit is
    printed (exit 0). This is how daemonkit/cli.py calls the module."""
    parser = argparse.ArgumentParser(prog="daemonkit")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("status").add_argument("--pidfile")
    add_arguments(sub.add_parser("unit"))
    args = parser.parse_args(
        ["unit", "--notify", "svc", "--user", "daemon", "--", "/bin/prog", "--user", "x", "--"]
    )
    assert args.action == "unit"
    assert run(args) == 0
    printed = capsys.readouterr().out
    assert printed == systemd_unit(
        "svc", ["/bin/prog", "--user", "x", "--"], notify=True, user="daemon"
    )
    help_text = subprocess.run(
        [sys.executable, "-m", "daemonkit.unit", "svc", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert help_text.returncode == 0 and "--sysv" in help_text.stdout
    assert "daemonkit unit NAME [OPTIONS] -- CMD [ARG...]" in help_text.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["svc", "/bin/true"], "the command goes after --"),
        (["svc"], "no command given"),
        (["svc", "--bogus", "--", "/bin/true"], "unknown option '--bogus'"),
        (["svc", "--"], "no command"),
        (["svc", "--pidfile", "x.pid", "--", "/bin/true"], "absolute"),
        (["svc", "--forking", "--", "/bin/true"], "needs a pidfile"),
        (["svc", "--respawn", "--", "/bin/true"], "use --restart"),
        (["svc", "--sysv", "--forking", "--", "/bin/true"], "for systemd units"),
        (["bad name", "--", "/bin/true"], "unit name"),
    ],
)
def test_command_errors_exit_6_with_the_reason(args: list[str], message: str) -> None:
    """Bad settings exit 6 (LSB: not configured), with one line naming the
    problem, and print no unit."""
    result = unit_command(*args)
    assert result.returncode == 6, result
    assert message in result.stderr and result.stderr.startswith("daemonkit: unit: ")
    assert result.stdout == ""


# --- SysV init scripts, run for real ---------------------------------------------


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def init(script: Path, action: str) -> subprocess.CompletedProcess[str]:
    """Run ``script ACTION`` as init would (no stdin, a plain environment)."""
    return subprocess.run(
        [str(script), action],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=clean_env(),
    )


def pid_from(pidfile: Path, daemons: Daemons) -> int:
    pid = int(pidfile.read_text())
    daemons.track(pid)
    return pid


@pytest.mark.parametrize("shell", ["bash", "dash", "sh"])
def test_sysv_script_is_valid_shell(shell: str) -> None:
    """The script parses in bash and in a strict POSIX shell (dash), since
    /bin/sh is dash on Debian; and it carries an LSB header."""
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    text = sysv_script(
        "svc",
        ["/usr/bin/prog", "it's", "$HOME", "a b", "`x`", '"q"'],
        pidfile="/run/svc/svc.pid",
        user="daemon",
        environment={"A": "b c"},
        reload_signal=None,
    )
    result = subprocess.run([shell, "-n"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    header = text.split("### BEGIN INIT INFO\n")[1].split("### END INIT INFO")[0]
    fields = dict(re.findall(r"# ([A-Za-z-]+):\s+(.*)", header))
    assert fields["Provides"] == "svc"
    assert fields["Default-Start"] == "2 3 4 5" and fields["Default-Stop"] == "0 1 6"
    assert {"Required-Start", "Required-Stop", "Short-Description"} <= set(fields)


def test_sysv_script_start_status_reload_restart_stop(daemons: Daemons, tmp_path: Path) -> None:
    """The whole life of a service through its init script, with the LSB exit
    codes: start (0 once the program said READY=1; the pidfile names it),
    start again (0, same pid), status (0), reload (0, SIGHUP reaches the
    program), restart (0, a new pid), stop (0, gone), status (3), stop again
    (0), reload when stopped (7), try-restart when stopped (0, nothing
    started), an unknown action (2)."""
    program = tmp_path / "program.py"
    program.write_text(PROGRAM)
    out = tmp_path / "report.json"
    pidfile = tmp_path / "svc.pid"
    text = sysv_script(
        "svc",
        [sys.executable, str(program), str(out)],
        pidfile=pidfile,
        notify=True,
        daemonkit=DAEMONKIT,
    )
    script = write_script(tmp_path / "svc", text)
    started = init(script, "start")
    assert started.returncode == 0, started.stderr
    first = pid_from(pidfile, daemons)
    assert read_report(out)["pid"] == first
    again = init(script, "start")
    assert again.returncode == 0 and "already running" in again.stderr
    assert int(pidfile.read_text()) == first
    status = init(script, "status")
    assert status.returncode == 0 and f"pid {first}" in status.stdout

    reload = init(script, "reload")
    assert reload.returncode == 0, reload.stderr
    assert wait_until(lambda: Path(f"{out}.hup").exists(), 10)

    out.unlink()
    restarted = init(script, "restart")
    assert restarted.returncode == 0, restarted.stderr
    second = pid_from(pidfile, daemons)
    assert second != first and is_alive(second) and wait_gone(first, 10)
    assert read_report(out)["pid"] == second

    stopped = init(script, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert wait_gone(second, 10)
    assert init(script, "status").returncode == 3
    assert init(script, "stop").returncode == 0
    assert init(script, "reload").returncode == 7
    assert init(script, "try-restart").returncode == 0
    assert init(script, "status").returncode == 3  # try-restart started nothing
    usage = init(script, "bogus")
    assert usage.returncode == 2 and "Usage:" in usage.stderr


def test_sysv_script_sleep_300(daemons: Daemons, tmp_path: Path) -> None:
    """The plainest service, ``sleep 300``: start 0, status 0, stop 0, status 3;
    the process the pidfile named is gone."""
    pidfile = tmp_path / "sleep.pid"
    script = write_script(
        tmp_path / "sleeper",
        sysv_script("sleeper", ["sleep", "300"], pidfile=pidfile, daemonkit=DAEMONKIT),
    )
    assert init(script, "start").returncode == 0
    pid = pid_from(pidfile, daemons)
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        assert cmdline.read().split(b"\0")[:2] == [b"sleep", b"300"]
    assert init(script, "status").returncode == 0
    assert init(script, "stop").returncode == 0
    assert wait_gone(pid, 10)
    assert init(script, "status").returncode == 3


def test_sysv_script_notify_reports_a_failed_start(daemons: Daemons, tmp_path: Path) -> None:
    """With notify, start waits for READY=1; a program that dies first makes
    start exit 1 and print why, leaving status 3 (not running)."""
    pidfile = tmp_path / "svc.pid"
    script = write_script(
        tmp_path / "svc",
        sysv_script(
            "svc",
            [sys.executable, "-c", "import sys; sys.exit('config file missing: /etc/svc.conf')"],
            pidfile=pidfile,
            notify=True,
            timeout=20,
            daemonkit=DAEMONKIT,
        ),
    )
    result = init(script, "start")
    assert result.returncode == 1
    assert "exited with status 1" in result.stderr, result.stderr
    assert init(script, "status").returncode == 3


def test_sysv_script_without_reload_says_unimplemented(tmp_path: Path) -> None:
    """reload_signal=None: reload exits 3 (LSB: unimplemented feature), and
    force-reload on a stopped service does nothing and exits 0."""
    script = write_script(
        tmp_path / "svc",
        sysv_script(
            "svc",
            ["sleep", "300"],
            pidfile=tmp_path / "p.pid",
            reload_signal=None,
            daemonkit=DAEMONKIT,
        ),
    )
    result = init(script, "reload")
    assert result.returncode == 3 and "not supported" in result.stderr
    assert init(script, "force-reload").returncode == 0
    assert not (tmp_path / "p.pid").exists()


def test_sysv_script_creates_its_run_directory(tmp_path: Path) -> None:
    """A pidfile under /run gets its directory made at start (/run is emptied
    at boot): the script says so, with mkdir -p."""
    text = sysv_script("svc", ["/bin/true"], pidfile="/run/svc/svc.pid")
    assert "[ -d /run/svc ] || mkdir -p -m 0755 /run/svc || return 1" in text
    assert "mkdir" not in sysv_script("svc", ["/bin/true"], pidfile=tmp_path / "p.pid")
