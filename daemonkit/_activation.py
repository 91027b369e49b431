"""What a parent handed this process in its environment: activated sockets,
and a daemon that ``daemonkit start``/``run`` already made.

Both name the pid they are meant for (``$LISTEN_PID``,
``$DAEMONKIT_DAEMON_PID``; exec keeps the pid), so children that merely
inherit the variables are not fooled. Kept apart from :mod:`daemonkit.notify`
so that the launcher can read them without importing the socket module.
"""

from __future__ import annotations

import os

LISTEN_FDS_START = 3


def activated_count() -> int:
    """How many descriptors systemd passed to this very process (``$LISTEN_PID``)."""
    pid = os.environ.get("LISTEN_PID", "")
    count = os.environ.get("LISTEN_FDS", "")
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return 0
    return int(count)


def activated_fd_numbers() -> list[int]:
    """Descriptors passed by socket activation to this process (no side effects)."""
    return list(range(LISTEN_FDS_START, LISTEN_FDS_START + activated_count()))


def listen_fd_names() -> list[str]:
    """``$LISTEN_FDNAMES`` split, padded with "unknown" like sd_listen_fds_with_names."""
    count = activated_count()
    names = os.environ.get("LISTEN_FDNAMES", "")
    split = names.split(":") if names else []
    return (split + ["unknown"] * count)[:count]


def hand_over(fds: list[int]) -> None:
    """In a daemon forked from an activated process: the descriptors are its now."""
    if fds:
        os.environ["LISTEN_PID"] = str(os.getpid())


def made_by_daemonkit() -> bool:
    """True in a program ``daemonkit start``/``run`` exec'd: it is a daemon already."""
    return os.environ.get("DAEMONKIT_DAEMON_PID") == str(os.getpid())


def inherited_lock_fds() -> list[int]:
    """The pidfile lock ``daemonkit start`` handed down (to keep it open)."""
    fd = os.environ.get("DAEMONKIT_PIDFILE_FD", "")
    return [int(fd)] if made_by_daemonkit() and fd.isdigit() else []


def handed_down_environment(pid: int, lock_fd: int | None) -> dict[str, str]:
    """The variables ``daemonkit start``/``run`` give the program it execs."""
    variables = {"DAEMONKIT_DAEMON_PID": str(pid)}
    if lock_fd is not None:
        variables["DAEMONKIT_PIDFILE_FD"] = str(lock_fd)
    return variables
