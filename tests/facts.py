"""Facts about the current process, gathered inside a daemon under test.

Daemon scripts started by the tests import this module and write
``collect()`` to a JSON report file, which the test then checks: the real
state of a real process, not what daemonkit believes it did.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from typing import Any

WATCHED_SIGNALS = (
    "SIGTERM",
    "SIGHUP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGUSR1",
    "SIGUSR2",
    "SIGINT",
)


def _tty_errno() -> int:
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError as exc:
        return exc.errno or 0
    os.close(fd)
    return 0


def _fd_targets() -> dict[str, str]:
    targets = {}
    names = os.listdir("/proc/self/fd")
    for name in names:
        try:
            targets[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the descriptor listdir itself used
    return targets


def _handler_name(handler: Any) -> str:
    if hasattr(handler, "reopen"):  # daemonkit's reopen-then-handler chain
        then = handler.then
        return "reopen" if then is None else "reopen+" + _handler_name(then)
    return getattr(handler, "__name__", repr(handler))


def _disposition(name: str) -> str:
    signum = getattr(signal, name)
    handler = signal.getsignal(signum)
    if handler == signal.SIG_IGN:
        return "ignore"
    if handler == signal.SIG_DFL:
        return "default"
    if handler is None:
        return "none"
    # daemonkit's dispatcher wraps the handler it runs
    return _handler_name(getattr(handler, "__wrapped__", handler))


def collect() -> dict[str, Any]:
    """Everything the tests check about a daemon, as JSON-friendly values."""
    umask = os.umask(0)
    os.umask(umask)
    with open("/proc/self/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "sid": os.getsid(0),
        "pgid": os.getpgid(0),
        "tty_nr": int(fields[4]),
        "tty_errno": _tty_errno(),
        "tty_errno_name": errno.errorcode.get(_tty_errno(), ""),
        "cwd": os.getcwd(),
        "umask": umask,
        "fds": _fd_targets(),
        "signals": {name: _disposition(name) for name in WATCHED_SIGNALS},
        "resuid": list(os.getresuid()),
        "resgid": list(os.getresgid()),
        "groups": sorted(os.getgroups()),
        "core_limit": list(__import__("resource").getrlimit(__import__("resource").RLIMIT_CORE)),
    }


def report(path: str, **extra: Any) -> None:
    """Write ``collect()`` plus ``extra`` to ``path`` atomically."""
    data = collect()
    data.update(extra)
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as out:
        json.dump(data, out)
    os.rename(temporary, path)
