"""Which descriptors socket activation passed to this process (environment only).

Kept apart from :mod:`daemonkit.notify` so that the launcher can keep
activated descriptors open without importing the socket module.
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
