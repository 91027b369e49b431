"""Validate a context's policies in the launching process, before any fork.

:func:`build_plan` checks everything that can be checked without side
effects (directories, users, groups, signal map, descriptors) and opens the
stream files, so that every configuration error surfaces as a
:class:`~daemonkit.errors.DaemonError` in the process the user is watching,
while nothing irreversible has happened yet.
"""

from __future__ import annotations

import os
import sys

from . import _posix
from ._activation import activated_fd_numbers, inherited_lock_fds
from ._lazy import errors
from ._logfiles import (
    LogFiles,
    file_handlers,
    handler_descriptor,
    logging_handlers,
    stream_log_path,
)
from .signals import Installation, resolve_catchable, resolve_signal_map, with_reopen
from .streams import StreamTargets, file_descriptor, resolve_streams

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS

if TYPE_CHECKING:
    from typing import Any

    from .context import DaemonContext
    from .signals import ResolvedMap


class OwnerChange:
    """The process owner to switch to; ``groups`` None keeps the supplementary groups."""

    def __init__(self, uid: int, gid: int, groups: list[int] | None) -> None:
        self.uid = uid
        self.gid = gid
        self.groups = groups


class Plan:
    """Everything the daemon needs, resolved and checked in the launcher."""

    def __init__(self, detach: bool, reason: str) -> None:
        self.detach = detach
        self.reason = reason
        self.chroot_directory: str | None = None
        self.working_directory = "/"
        self.umask = 0o022
        self.prevent_core = True
        self.owner: OwnerChange | None = None
        self.signals: ResolvedMap = {}
        self.installation = Installation({})
        # fds 0-2's sources and the descriptors to close after: DaemonContext._prepare
        self.redirects: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
        self.streams = StreamTargets()
        self.log_files = LogFiles()
        self.preserved: set[int] = set()
        self.activated: list[int] = []
        self.top_fd = 2


def _check_directory(label: str, path: str, shown: str | None = None) -> None:
    shown = shown or path
    if not os.path.exists(path):
        raise errors.DirectoryError(
            f"{label} {shown!r} does not exist; create it or choose another"
        )
    if not os.path.isdir(path):
        raise errors.DirectoryError(f"{label} {shown!r} is not a directory")
    if not os.access(path, os.X_OK):
        raise errors.DirectoryError(f"{label} {shown!r} is not searchable by uid {os.geteuid()}")


def _as_path(label: str, value: object) -> str:
    if isinstance(value, (str, bytes, os.PathLike)):
        return os.fsdecode(os.fspath(value))
    raise errors.ConfigurationError(f"{label} must be a path, not {type(value).__name__}")


def _lookup_user(uid: object) -> Any:
    import pwd

    try:
        if isinstance(uid, str):
            return pwd.getpwnam(uid)
        if isinstance(uid, int) and not isinstance(uid, bool) and uid >= 0:
            return pwd.getpwuid(uid)
    except (KeyError, OverflowError, ValueError):  # ValueError: a NUL in the name
        raise errors.UnknownUserError(
            f"uid: no user {uid!r} in the user database; create it or choose another"
        ) from None
    raise errors.ConfigurationError(f"uid must be a user name or a uid number, not {uid!r}")


def _lookup_gid(gid: object) -> int:
    import grp

    try:
        if isinstance(gid, str):
            return grp.getgrnam(gid).gr_gid
        if isinstance(gid, int) and not isinstance(gid, bool) and gid >= 0:
            return grp.getgrgid(gid).gr_gid
    except (KeyError, OverflowError, ValueError):  # ValueError: a NUL in the name
        raise errors.UnknownGroupError(
            f"gid: no group {gid!r} in the group database; create it or choose another"
        ) from None
    raise errors.ConfigurationError(f"gid must be a group name or a gid number, not {gid!r}")


def resolve_owner(uid: object, gid: object, initgroups: bool) -> OwnerChange | None:
    """The owner change asked for, or None when the process keeps its owner.

    A uid given without a gid takes that user's primary group (python-daemon
    would keep the launcher's, typically root's group 0).
    """
    current_uid, current_gid = os.getuid(), os.getgid()
    user = None
    if uid is None or uid == current_uid == os.geteuid():
        target_uid = current_uid
        if initgroups:
            user = _lookup_user(target_uid)
    else:
        user = _lookup_user(uid)
        target_uid = user.pw_uid
    if gid is None:
        target_gid = user.pw_gid if user is not None and target_uid != current_uid else current_gid
    elif gid == current_gid == os.getegid():
        target_gid = current_gid
    else:
        target_gid = _lookup_gid(gid)
    uid_changes = target_uid != current_uid or os.geteuid() != current_uid
    gid_changes = target_gid != current_gid or os.getegid() != current_gid
    if not (uid_changes or gid_changes or initgroups):
        return None
    if uid_changes and not _posix.has_capability(_posix.CAP_SETUID):
        raise errors.PrivilegeError(
            1,
            f"cannot switch to user {uid!r}: changing user needs root "
            f"(running as uid {os.geteuid()})",
        )
    if (gid_changes or initgroups) and not _posix.has_capability(_posix.CAP_SETGID):
        raise errors.PrivilegeError(
            1,
            f"cannot switch to group {gid!r}: changing group needs root "
            f"(running as uid {os.geteuid()})",
        )
    # Resolved here, not in the daemon: inside a chroot the group database
    # is the jail's (or missing).
    groups: list[int] | None = None
    if initgroups and user is not None:
        groups = sorted(set(os.getgrouplist(user.pw_name, target_gid)))
    elif uid_changes:
        groups = []
    return OwnerChange(target_uid, target_gid, groups)


MAX_FD = 2**31 - 1  # descriptors are C ints


def preserved_descriptors(files_preserve: object) -> set[int]:
    """Descriptors named by ``files_preserve`` (ints, file-likes, handlers)."""
    if files_preserve is None:
        return set()
    if isinstance(files_preserve, (str, bytes)) or not hasattr(files_preserve, "__iter__"):
        raise errors.ConfigurationError(
            f"files_preserve must be a list of descriptors, file objects or handlers, "
            f"not {files_preserve!r}"
        )
    preserved: set[int] = set()
    for item in files_preserve:
        if isinstance(item, (str, bytes, bool, float)) or (isinstance(item, int) and item < 0):
            raise errors.ConfigurationError(
                f"files_preserve: {item!r} is not a descriptor, file object or logging handler"
            )
        fd = file_descriptor(item)
        if fd is None:
            fd = handler_descriptor(item)
        if fd is not None and fd > MAX_FD:
            raise errors.ConfigurationError(
                f"files_preserve: {fd!r} is beyond any possible descriptor number"
            )
        if fd is not None:
            preserved.add(fd)
    return preserved


def _check_pidfile(pidfile: object) -> None:
    """A pidfile must be a context manager (PEP 3143): refuse anything else pre-fork."""
    if pidfile is None or (hasattr(pidfile, "__enter__") and hasattr(pidfile, "__exit__")):
        return
    if isinstance(pidfile, (str, os.PathLike)):
        raise errors.ConfigurationError(
            f"pidfile={pidfile!r} is a path; give a lock object: daemonkit.PIDFile({pidfile!r})"
        )
    raise errors.ConfigurationError(
        f"pidfile must be a lock object with __enter__ and __exit__ (such as "
        f"daemonkit.PIDFile(path)), not {pidfile!r}"
    )


def _check_umask(umask: object) -> int:
    if isinstance(umask, bool) or not isinstance(umask, int) or not 0 <= umask <= 0o777:
        raise errors.ConfigurationError(f"umask must be an int from 0 to 0o777, not {umask!r}")
    return umask


def _refuse_if_threaded() -> None:
    threading = sys.modules.get("threading")
    if threading is None or threading.active_count() == 1:
        return
    current = threading.current_thread()
    others = [
        thread.name
        for thread in threading.enumerate()
        if thread is not current and not thread.name.startswith("daemonkit-")
    ]
    if others:
        raise errors.ThreadsRunningError(
            f"DaemonContext.open() with other threads running ({', '.join(others)}): "
            "fork copies only the calling thread, so they would silently not exist in "
            "the daemon (and a lock one of them holds would stay locked forever). "
            "Start threads inside the with block, or pass allow_threads=True if "
            "losing them is intended"
        )


def _log_files(context: DaemonContext, plan: Plan, handlers: list[Any]) -> LogFiles:
    """What to reopen on rotation: stream paths and logging handlers' files."""
    files = LogFiles(plan.chroot_directory)
    for fd, value in ((1, context.stdout), (2, context.stderr)):
        source = plan.streams.fds[fd]
        if source is not None and source != fd:
            path = stream_log_path(value)
            if path is not None:
                files.add_stream(path, fd, source)
    for handler in file_handlers(handlers):
        files.add_handler(handler)
    return files


def build_plan(context: DaemonContext) -> Plan:
    """Validate every policy of ``context``; open stream files last."""
    if not _posix.platform_supported():
        raise errors.ConfigurationError("daemonkit needs a POSIX system with fork()")
    if context.detach_process is None:
        plan = Plan(*_posix.detach_decision())
    else:
        plan = Plan(bool(context.detach_process), "detach_process given explicitly")
    if context.chroot_directory is not None:
        chroot = os.path.abspath(_as_path("chroot_directory", context.chroot_directory))
        _check_directory("chroot_directory", chroot)
        if not _posix.has_capability(_posix.CAP_SYS_CHROOT):
            raise errors.PrivilegeError(
                1, f"cannot chroot to {chroot!r}: chroot needs root (running as uid {os.geteuid()})"
            )
        plan.chroot_directory = chroot
    working = _as_path("working_directory", context.working_directory)
    if plan.chroot_directory is not None:
        inside = os.path.join("/", working)
        _check_directory(
            "working_directory",
            os.path.join(plan.chroot_directory, inside.lstrip("/")),
            f"{inside} (inside chroot {plan.chroot_directory})",
        )
        plan.working_directory = inside
    else:
        _check_directory("working_directory", working)
        plan.working_directory = os.path.abspath(working)
    plan.umask = _check_umask(context.umask)
    _check_pidfile(context.pidfile)
    plan.prevent_core = bool(context.prevent_core)
    plan.owner = resolve_owner(context.uid, context.gid, bool(context.initgroups))
    signals = resolve_signal_map(context.signal_map, context)
    reopen_signal = resolve_reopen_signal(context.reopen_signal)
    handlers = logging_handlers()
    plan.activated = activated_fd_numbers()  # socket activation: kept open
    plan.preserved = (
        preserved_descriptors(context.files_preserve)
        | preserved_descriptors(handlers)  # logging handlers configured so far
        | set(plan.activated)
        | set(inherited_lock_fds())  # the lock `daemonkit start` holds for us
        | set(context.stop_requested.descriptors())
    )
    if plan.detach and not context.allow_threads:
        _refuse_if_threaded()
    plan.streams = resolve_streams(
        {"stdin": context.stdin, "stdout": context.stdout, "stderr": context.stderr}, plan.umask
    )
    plan.log_files = _log_files(context, plan, handlers)
    plan.signals = with_reopen(signals, reopen_signal, plan.log_files.reopen)
    plan.installation = Installation(plan.signals)
    plan.top_fd = _posix.highest_open_fd()
    return plan


def resolve_reopen_signal(value: object) -> int | None:
    """The ``reopen_signal`` policy: a catchable signal, or None for never."""
    if value is None:
        return None
    return resolve_catchable(value, "reopen_signal")
